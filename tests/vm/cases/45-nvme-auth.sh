# tests/vm/cases/45-nvme-auth.sh - NVMe in-band authentication (DH-HMAC-CHAP) through the agent,
# against an nvmet-tcp target that requires it: the secrets reach the kernel and work, a
# missing or wrong one (either direction) is refused and leaves no controller, and no secret
# is logged or persisted. Needs a kernel with NVME_HOST_AUTH and NVME_TARGET_AUTH: Debian's
# 6.1 has neither, its 6.12 both, so run.sh boots the 6.12 kernel for this case (the "auth
# boot", VM_REQUIRE_AUTH=1). Elsewhere the case registers no check.
# Needs 10-base.sh (modules, configfs, system bus) and 20-agent.sh (helpers).

ANQN=nqn.2024-01.io.volfence.vm:auth
APORT=4610

# Whether nvmet takes DH-HMAC-CHAP keys (a host entry has dhchap_key).
auth_supported() {
    local h=$NVMET/hosts/nqn.2024-01.io.volfence.vm:probe ok=1
    mkdir "$h" 2>/dev/null || return 1
    [ -e "$h/dhchap_key" ] || ok=0
    rmdir "$h"
    [ $ok = 1 ]
}

if ! auth_supported; then
    if [ "${VM_REQUIRE_AUTH:-0}" = 1 ]; then
        t_auth_kernel() { fail "kernel $(uname -r): nvmet has no dhchap_key (NVME_TARGET_AUTH off)"; }
        check nvme-auth-kernel-support t_auth_kernel
    else
        echo "    (kernel $(uname -r) has no NVMe DH-HMAC-CHAP: run.sh's auth boot runs this case)"
    fi
    return 0
fi

auth_host() { cat /etc/nvme/hostnqn; }
auth_key() { cat "$W/auth-$1.key"; }
# auth_connect VOLUME [volfencectl connect options...]
auth_connect() {
    "$VOLFENCECTL" connect "$1" --nqn "$ANQN" --traddr 127.0.0.1 --trsvcid $APORT --nsid 1 --json "${@:2}"
}
auth_none_left() {
    [ -z "$(ctrls_of "$ANQN")" ] || fail "controllers left to $ANQN: $(ctrls_of "$ANQN")"
}

# The shared test body (tests/nvme.rs), on a target of its own, without the agent.
t_auth_shared_body() { nvme_bodies "$OUT/nvme-auth-tests.log" dhchap; }
check nvme-auth-shared-test-body t_auth_shared_body

t_auth_setup() {
    [ -s /etc/nvme/hostnqn ] || { mkdir -p /etc/nvme; nvme gen-hostnqn > /etc/nvme/hostnqn; }
    local k host s=$NVMET/subsystems/$ANQN
    host=$(auth_host)
    # 32-byte secrets, untransformed (hmac 0), as `nvme gen-dhchap-key` prints them
    for k in host ctrl wrong; do nvme gen-dhchap-key > "$W/auth-$k.key" || return 1; done
    target_add "$ANQN" $APORT 1 || return 1
    # only this host, and only with its secret
    mkdir "$NVMET/hosts/$host" && auth_key host > "$NVMET/hosts/$host/dhchap_key" || return 1
    echo 0 > "$s/attr_allow_any_host" && ln -s "$NVMET/hosts/$host" "$s/allowed_hosts/$host" || return 1
    printf '[log]\ntarget = "journald"\n' > "$W/auth-agent.toml"
    rm -rf /run/volfence
    # debug: the option string the agent writes to the kernel is logged, redacted
    spawn aagent env RUST_LOG=info,volfence=debug "$VOLFENCED" --config "$W/auth-agent.toml" || return 1
    wait_for 60 fence_held || { cat "$OUT/aagent.log"; return 1; }
}
check nvme-auth-target-setup t_auth_setup

# After a failed check: no volume of this case connected, no controller to its subsystem.
auth_restore() {
    "$VOLFENCECTL" disconnect vol-auth
    local c
    for c in $(ctrls_of "$ANQN"); do echo 1 > "/sys/class/nvme/$c/delete_controller"; done
    udevadm settle -t 20
}
AFTER_FAIL=auth_restore

t_auth_connect_io() {
    local dev c
    expect_rc 0 auth_connect vol-auth -o "dhchap_secret=$(auth_key host)" || return 1
    json_assert 's["State"] == "live"' 's["Device"].startswith("/dev/nvme")' 's["StablePath"].startswith("/dev/disk/by-id/nvme-uuid.")' || return 1
    dev=$(json_str Device)
    c=$(ctrls_of "$ANQN")
    [ "$(wc -w <<< "$c")" = 1 ] || fail "expected one controller, found: $c" || return 1
    # the kernel holds the secret the agent passed (root-only attribute)
    [ "$(cat "/sys/class/nvme/$c/dhchap_secret")" = "$(auth_key host)" ] || fail "$c/dhchap_secret is not the secret given" || return 1
    echo "volfence-vm-auth" | dd of="$dev" bs=4096 conv=sync,fsync oflag=direct status=none || return 1
    grep -q volfence-vm-auth "$W/nvmet/$APORT-1.img" || fail "write not on the target's backing file" || return 1
    # a repeated connect reuses the authenticated controller
    expect_rc 0 auth_connect vol-auth -o "dhchap_secret=$(auth_key host)" || return 1
    [ "$(json_str Device)" = "$dev" ] && [ "$(ctrls_of "$ANQN")" = "$c" ] || fail "second connect was not idempotent" || return 1
    # neither logged nor persisted: the option string is in the journal, without the secret
    agent_journal | grep -q "writing to /dev/nvme-fabrics: .*,dhchap_secret=<redacted>" \
        || fail "no redacted option string in the journal" || return 1
    if agent_journal | grep -F "$(auth_key host | cut -d: -f3)"; then fail "a secret is in the journal"; return 1; fi
    if grep -rF "DHHC-1" /run/volfence; then fail "a secret is in the agent's records"; return 1; fi
    expect_rc 0 "$VOLFENCECTL" disconnect vol-auth || return 1
    auth_none_left
}
check nvme-auth-dhchap-connect-io t_auth_connect_io

t_auth_refused() {
    # the target requires authentication: no secret, and the wrong one, are refused
    expect_rc 1 auth_connect vol-auth || return 1
    contains "$RUN_OUT" "org.volfence.Error.AuthenticationFailed: connecting to $ANQN at 127.0.0.1:$APORT: the target requires authentication and no dhchap_secret was given" || return 1
    auth_none_left || return 1
    expect_rc 1 auth_connect vol-auth -o "dhchap_secret=$(auth_key wrong)" || return 1
    # Right after a refused connect, 6.12's nvmet can leave the host's AUTH_Send unanswered
    # under TCG: the host's admin timeout (60 s) ends it with EIO instead of EKEYREJECTED
    # (dmesg: "auth_send failed with status 880"). Refused either way; nothing may be left.
    if ! grep -qF "authentication failed: the target rejected dhchap_secret" <<< "$RUN_OUT"; then
        contains "$RUN_OUT" "connecting to $ANQN at 127.0.0.1:$APORT: Input/output error" || return 1
        log "the kernel answered the wrong secret with EIO after its admin timeout: $(dmesg | grep 'auth_send failed' | tail -1)"
    fi
    auth_none_left || return 1
    expect_rc 0 "$VOLFENCECTL" list --json || return 1
    if grep -q '"vol-auth"' <<< "$RUN_OUT"; then fail "a refused volume is listed"; return 1; fi
}
check nvme-auth-refused-leaves-nothing t_auth_refused

t_auth_bidirectional() {
    local host; host=$(auth_host)
    # the host asks for a controller secret the target was not given: the controller cannot answer
    expect_rc 1 auth_connect vol-auth -o "dhchap_secret=$(auth_key host)" -o "dhchap_ctrl_secret=$(auth_key ctrl)" || return 1
    contains "$RUN_OUT" "AuthenticationFailed" || return 1
    auth_none_left || return 1
    auth_key ctrl > "$NVMET/hosts/$host/dhchap_ctrl_key" || return 1
    expect_rc 0 auth_connect vol-auth -o "dhchap_secret=$(auth_key host)" -o "dhchap_ctrl_secret=$(auth_key ctrl)" || return 1
    json_assert 's["State"] == "live"' || return 1
    expect_rc 0 "$VOLFENCECTL" disconnect vol-auth || return 1
    auth_none_left || return 1
    # a controller that cannot prove itself (not the secret the host expects) is refused
    expect_rc 1 auth_connect vol-auth -o "dhchap_secret=$(auth_key host)" -o "dhchap_ctrl_secret=$(auth_key wrong)" || return 1
    contains "$RUN_OUT" "did not prove dhchap_ctrl_secret" || return 1
    auth_none_left
}
check nvme-auth-bidirectional t_auth_bidirectional

t_auth_teardown() {
    local host; host=$(auth_host)
    stop_spawned aagent 15
    rm -f "$NVMET/ports/$APORT/subsystems/$ANQN" "$NVMET/subsystems/$ANQN/allowed_hosts/$host"
    rmdir "$NVMET/ports/$APORT"
    echo 0 > "$NVMET/subsystems/$ANQN/namespaces/1/enable"
    rmdir "$NVMET/subsystems/$ANQN/namespaces/1" "$NVMET/subsystems/$ANQN" "$NVMET/hosts/$host"
    [ ! -e "$NVMET/subsystems/$ANQN" ]
}
AFTER_FAIL=
check nvme-auth-teardown t_auth_teardown
