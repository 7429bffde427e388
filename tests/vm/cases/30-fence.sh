# tests/vm/cases/30-fence.sh - the Kubernetes fence against the project's API emulator running
# in the guest (real kube client, real system bus), a partition from the API server, and the
# hardware watchdog (qemu's i6300esb) armed only while the lease is held and disarmed on a clean
# stop. Needs 10-base.sh (system bus) and 20-agent.sh (helpers; its agents are stopped).

EMU_URL=http://127.0.0.1:16443
KCFG=$W/kubeconfig

# emu_faults JSON : set the faults of client "vmnode" through the emulator's control endpoint
emu_faults() {
    /usr/bin/python3 -c '
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method="PUT")
print(urllib.request.urlopen(req, timeout=10).read().decode())' "$EMU_URL/emulator/v1/faults/vmnode" "$1"
}
fence_state_is() { "$VOLFENCECTL" status --json 2>/dev/null | grep -qF "\"FenceState\": \"$1\""; }
# log_time NAME PATTERN : wall-clock seconds of the first line of $OUT/NAME.log matching PATTERN
log_time() {
    local ts
    ts=$(grep -m1 -F -- "$2" "$OUT/$1.log" | awk '{print $1}')
    [ -n "$ts" ] && date -d "$ts" +%s.%N
}

t_emulator() {
    spawn emulator "$VOLFENCE_EMULATOR" --listen 127.0.0.1:16443 --kubeconfig "$KCFG" --client vmnode || return 1
    wait_for 30 test -s "$KCFG" || return 1
    wait_for 30 grep -q "listening on" "$OUT/emulator.log" || return 1
    # As an operator prepares a cluster: the lease namespace first, with kubectl.
    expect_rc 0 kubectl --kubeconfig "$KCFG" create namespace volfence-system || return 1
    contains "$RUN_OUT" "namespace/volfence-system created" || return 1
    # ... and the claims namespace ([claims] namespace, docs/claims.md).
    expect_rc 0 kubectl --kubeconfig "$KCFG" create namespace volfence-claims || return 1
    contains "$RUN_OUT" "namespace/volfence-claims created"
}
check kube-emulator-in-guest t_emulator

t_kube_held() {
    printf '[fence]\nbackend = "kubernetes"\nlease_namespace = "volfence-system"\non_lease_loss = "disconnect"\n[kubernetes]\nkubeconfig = "%s"\n[metrics]\nenabled = false\n' \
        "$KCFG" > "$W/fence-kube.toml"
    rm -rf /var/lib/volfence /run/volfence
    spawn kagent env RUST_LOG=info "$VOLFENCED" --config "$W/fence-kube.toml" || return 1
    wait_for 90 fence_held || { tail -20 "$OUT/kagent.log"; return 1; }
    expect_rc 0 "$VOLFENCECTL" status --json || return 1
    json_assert 's["FenceBackend"] == "kubernetes"' 's["Epoch"] == 1' 's["Holder"].startswith(s["NodeName"] + "/")' || return 1
    # What kubectl shows of it: the holder and the transitions.
    local node; node=$(/usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["NodeName"])' <<< "$RUN_OUT")
    expect_rc 0 kubectl --kubeconfig "$KCFG" get lease -n volfence-system "$node" -o 'jsonpath={.spec.holderIdentity} {.spec.leaseTransitions}' || return 1
    contains "$RUN_OUT" "$node/" && contains "$RUN_OUT" " 1" || return 1
    # Claims through the shipped bus policy, by an operator without root: none yet.
    expect_rc 0 as_nobody "$VOLFENCECTL" claims --all || return 1
    contains "$RUN_OUT" "no claims"
}
check kube-fence-held-through-emulator t_kube_held

t_kube_partition() {
    local cut fenced d
    nap 3   # a few renews in
    emu_faults '{"partition": true}' || return 1
    cut=$(date +%s.%N)
    wait_for 60 fence_state_is fenced || { tail -20 "$OUT/kagent.log"; return 1; }
    fenced=$(log_time kagent "-> fenced") || fail "no fenced transition in the agent log" || return 1
    d=$(awk -v a="$cut" -v b="$fenced" 'BEGIN{printf "%.2f", b-a}')
    log "fenced ${d}s after the partition (D - M = 8s)"
    # the last successful renew was sent before the cut: validity ended by cut + D - M
    awk -v d="$d" 'BEGIN{exit !(d <= 8.0 && d >= 3.0)}' || fail "fenced ${d}s after the cut, expected 3..8s" || return 1
    grep -qF "on_lease_loss = disconnect" "$OUT/kagent.log" || fail "loss action not logged"
}
check kube-partition-fences-within-d-minus-m t_kube_partition

t_kube_recover() {
    emu_faults '{}' || return 1
    wait_for 60 fence_held || return 1
    expect_rc 0 "$VOLFENCECTL" status --json || return 1
    json_assert 's["Epoch"] == 2' || return 1
    expect_rc 0 kubectl --kubeconfig "$KCFG" get events -n volfence-system --field-selector reason=LeaseLost -o name || return 1
    contains "$RUN_OUT" "event/" || return 1
    stop_spawned kagent 30 || return 1
    [ "$(spawned_rc kagent)" = 0 ] || fail "kagent exit $(spawned_rc kagent)"
}
check kube-recovers-with-new-epoch t_kube_recover

t_hw_watchdog() {
    local wd=/sys/class/watchdog/watchdog0
    printf '[fence]\nwatchdog_device = "/dev/watchdog"\n[metrics]\nenabled = false\n' > "$W/fence-wd.toml"
    rm -rf /var/lib/volfence /run/volfence
    spawn wagent env RUST_LOG=info "$VOLFENCED" --config "$W/fence-wd.toml" || return 1
    wait_for 60 fence_held || return 1
    wait_for 20 grep -qF "armed with a 5s timeout" "$OUT/wagent.log" || return 1
    if [ -r "$wd/state" ]; then
        log "watchdog0 state $(cat $wd/state), timeout $(cat $wd/timeout)s"
        [ "$(cat $wd/state)" = active ] || fail "watchdog not active while the lease is held" || return 1
        [ "$(cat $wd/timeout)" = 5 ] || fail "watchdog timeout $(cat $wd/timeout), expected 5" || return 1
    fi
    nap 8   # longer than the timeout: only renews keep the guest alive
    fence_held || fail "agent no longer holds the fence" || return 1
    stop_spawned wagent 30 || return 1
    [ "$(spawned_rc wagent)" = 0 ] || fail "wagent exit $(spawned_rc wagent)" || return 1
    grep -qF "disarmed" "$OUT/wagent.log" || fail "no magic close" || return 1
    if [ -r "$wd/state" ]; then
        [ "$(cat $wd/state)" = inactive ] || fail "watchdog still $(cat $wd/state) after a clean stop"
    fi
}
check hardware-watchdog-fed-by-renews-disarmed-on-stop t_hw_watchdog

t_emulator_stop() { stop_spawned emulator 10; }
check kube-emulator-stops t_emulator_stop
