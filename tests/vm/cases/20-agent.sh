# tests/vm/cases/20-agent.sh - the agent on a real system bus, a non-root caller against the
# shipped bus policy, the Debian package, and the unit's sd_notify contract.
# Needs 10-base.sh (system bus with the source policy in /etc/dbus-1/system.d/).
#
# Part a runs the host-built $VOLFENCED/$VOLFENCECTL; parts b and c run what the .deb installs.

AGENT_NAME=org.volfence.Agent1
AGENT_PATH=/org/volfence/Agent1
NODE=$(tr '[:upper:]' '[:lower:]' < /proc/sys/kernel/hostname)
NOTIFY_EVENTS=$OUT/notify-events.log

ctl() { "$VOLFENCECTL" "$@"; }
# fence_held [CTL] : the agent answers Status() with FenceState "held"
fence_held() { "${1:-$VOLFENCECTL}" status --json 2>/dev/null | grep -qF '"FenceState": "held"'; }
# owner_pid NAME : pid of the process owning NAME on the system bus
owner_pid() { bus_call GetConnectionUnixProcessID "string:$1" 2>/dev/null | awk '/uint32/{print $2}'; }
# ================================================================ a. host-built agent
t_clean_state() {
    # The guest's /etc and /var are overlays over the host's: drop whatever a run of the agent
    # or package on the host left there (only the guest's view changes), so that every VM run
    # starts from a fresh host.
    rm -rf /etc/volfence /var/lib/volfence /run/volfence
    if dpkg-query -W -f='${Status}' volfence 2>/dev/null | grep -q ' installed$'; then
        dpkg --purge volfence || return 1
    fi
    ! name_owned $AGENT_NAME || fail "something already owns $AGENT_NAME"
}
check agent-clean-state t_clean_state

t_agent_starts() {
    spawn agent "$VOLFENCED" || return 1
    # up (name owned) or dead, whichever comes first
    wait_for 60 eval 'name_owned $AGENT_NAME || spawned_exited agent' || return 1
    spawned_exited agent && { cat "$OUT/agent.log"; fail "volfenced exited with $(spawned_rc agent)"; return 1; }
    [ "$(owner_pid $AGENT_NAME)" = "$(spawned_pid agent)" ] || fail "$AGENT_NAME is not owned by the spawned volfenced" || return 1
    wait_for 30 fence_held || return 1
    cat "$OUT/agent.log"
    # the default backend must say loudly that it does not fence across hosts
    grep -q 'NO cross-host fencing' "$OUT/agent.log" || fail "no standalone-backend warning in the log"
}
check agent-starts-on-system-bus t_agent_starts

t_status_root() {
    expect_rc 0 ctl status || return 1
    contains "$RUN_OUT" "on node $NODE (pid $(spawned_pid agent))" || return 1
    contains "$RUN_OUT" "fence:     held" || return 1
    contains "$RUN_OUT" "WARNING:" || return 1
    expect_rc 0 ctl status --json || return 1
    contains "$RUN_OUT" '"FenceState": "held"' || return 1
    NODE=$NODE VERSION=$("$VOLFENCED" --version | awk '{print $2}') PID=$(spawned_pid agent) \
    json_assert 's["NodeName"] == e["NODE"]' \
        's["FenceState"] == "held" and s["Epoch"] == 1 and s["ValidForMs"] > 0' \
        's["Version"] == e["VERSION"]' \
        's["Pid"] == int(e["PID"])' \
        's["FenceBackend"] == "standalone" and s["Bus"] == "system"' \
        'any("NO cross-host fencing" in w for w in s["Warnings"])'
}
check status-as-root t_status_root

t_metrics() {
    # Prometheus endpoint on its default loopback address (busybox wget: no extra dependency)
    expect_rc 0 busybox wget -q -O - http://127.0.0.1:9477/metrics || return 1
    contains "$RUN_OUT" 'volfence_fence_state{state="held"} 1' &&
    contains "$RUN_OUT" 'volfence_fence_epoch 1' &&
    contains "$RUN_OUT" 'volfence_build_info{version="'
}
check metrics-endpoint t_metrics

t_nonroot_introspect() {
    expect_rc 0 as_nobody id -u || return 1
    [ "$RUN_OUT" = 65534 ] || fail "setpriv did not drop to uid 65534" || return 1
    expect_rc 0 as_nobody busctl --system --no-pager introspect $AGENT_NAME $AGENT_PATH || return 1
    local m
    for m in 'org.volfence.Agent1 ' '.Status ' '.SetLogLevel ' '.FenceState ' '.FenceStateChanged '; do
        contains "$RUN_OUT" "$m" || return 1
    done
    # property reads are allowed to everyone too
    expect_rc 0 as_nobody busctl --system get-property $AGENT_NAME $AGENT_PATH org.volfence.Agent1 FenceState || return 1
    [ "$RUN_OUT" = 's "held"' ] || fail "FenceState property: $RUN_OUT"
}
check nonroot-introspect-and-get-property t_nonroot_introspect

t_nonroot_status() {
    expect_rc 0 as_nobody "$VOLFENCECTL" status || return 1
    contains "$RUN_OUT" "on node $NODE" || return 1
    expect_rc 0 as_nobody "$VOLFENCECTL" status --json || return 1
    contains "$RUN_OUT" '"FenceState": "held"'
}
check nonroot-status t_nonroot_status

t_nonroot_set_log_level() {
    local before
    expect_rc 0 ctl status --json || return 1
    before=$(json_str LogLevel)
    [ -n "$before" ] && [ "$before" != debug ] || fail "log level is already debug: the test would prove nothing" || return 1
    expect_rc 4 as_nobody "$VOLFENCECTL" set-log-level debug || return 1
    # refused by the bus policy, before the daemon's own uid check
    contains "$RUN_OUT" org.freedesktop.DBus.Error.AccessDenied || return 1
    expect_rc 0 ctl status --json || return 1
    [ "$(json_str LogLevel)" = "$before" ] || fail "LogLevel changed to $(json_str LogLevel)" || return 1
    grep -i 'rejected send message' "$OUT/dbus-daemon.log" | tail -2 || true   # evidence, if logged
}
check nonroot-set-log-level-access-denied t_nonroot_set_log_level

t_root_set_log_level() {
    expect_rc 0 ctl set-log-level debug || return 1
    expect_rc 0 ctl status --json || return 1
    [ "$(json_str LogLevel)" = debug ] || fail "LogLevel is '$(json_str LogLevel)', expected debug" || return 1
    grep -q 'log level set to "debug" over D-Bus' "$OUT/agent.log" || fail "no log line for the change" || return 1
    expect_rc 0 ctl set-log-level info || return 1
    expect_rc 0 ctl status --json || return 1
    [ "$(json_str LogLevel)" = info ] || fail "LogLevel is '$(json_str LogLevel)', expected info"
}
check root-set-log-level t_root_set_log_level

t_second_instance() {
    local pid
    pid=$(spawned_pid agent)
    # With the defaults: the bus name is claimed before the metrics port, so the operator is
    # told the real reason.
    expect_rc 1 timeout 60 "$VOLFENCED" || return 1
    contains "$RUN_OUT" "is another volfenced running?" || return 1
    # the first instance is untouched
    spawned_running agent || fail "the first volfenced died" || return 1
    [ "$(owner_pid $AGENT_NAME)" = "$pid" ] || fail "$AGENT_NAME changed owner" || return 1
    fence_held || fail "the first volfenced no longer holds the fence"
}
check second-instance-refused t_second_instance

t_sigterm() {
    stop_spawned agent 30 || fail "volfenced did not exit within 30s of SIGTERM" || return 1
    [ "$(spawned_rc agent)" = 0 ] || fail "volfenced exited with $(spawned_rc agent) after SIGTERM" || return 1
    name_free $AGENT_NAME || fail "$AGENT_NAME still owned" || return 1
    expect_rc 3 ctl status || return 1
    contains "$RUN_OUT" "not running" || return 1
    tail -5 "$OUT/agent.log"
    grep -q 'SIGTERM' "$OUT/agent.log" || fail "no SIGTERM line in the agent log"
}
check sigterm-exits-0-and-releases-name t_sigterm

# ================================================================ b. the Debian package
DEB_FILES=(/usr/bin/volfenced /usr/bin/volfencectl /usr/lib/systemd/system/volfenced.service
           /usr/share/dbus-1/system.d/org.volfence.Agent1.conf /etc/volfence/config.toml
           /usr/share/man/man8/volfenced.8.gz /usr/share/man/man8/volfencectl.8.gz
           /usr/share/man/man5/volfence.toml.5.gz)

t_deb_install() {
    # The package's man pages fire man-db's trigger, which rebuilds the index of every page on
    # the shared host root: minutes under TCG. Debian's own build images switch it off alike.
    rm -f /var/lib/man-db/auto-update
    expect_rc 0 dpkg -i "$VOLFENCE_DEB" || return 1
    expect_rc 0 dpkg-query -W -f='${Status} ${Version}' volfence || return 1
    contains "$RUN_OUT" "install ok installed" || return 1
    expect_rc 0 dpkg -L volfence || return 1
    local f listed=$RUN_OUT
    for f in "${DEB_FILES[@]}"; do
        grep -qx -- "$f" <<< "$listed" || fail "$f not in dpkg -L volfence" || return 1
        test -f "$f" || fail "$f not installed" || return 1
    done
    test -x /usr/bin/volfenced && test -x /usr/bin/volfencectl || fail "binaries not executable" || return 1
    # the config file is a conffile (kept on upgrade and remove) and unmodified
    expect_rc 0 dpkg-query -W -f='${Conffiles}' volfence || return 1
    local sum
    sum=$(md5sum < /etc/volfence/config.toml | cut -d' ' -f1)
    grep -qE "^ */etc/volfence/config.toml $sum\$" <<< "$RUN_OUT" || fail "/etc/volfence/config.toml is not a registered conffile (md5 $sum)" || return 1
    # postinst neither enables nor starts the unit: backend and node name are site decisions
    test ! -e /etc/systemd/system/multi-user.target.wants/volfenced.service || fail "unit enabled by postinst" || return 1
    # informational: is the .deb built from the sources in this tree?
    cmp /usr/share/dbus-1/system.d/org.volfence.Agent1.conf "$VOLFENCE_SRC/dbus/org.volfence.Agent1.conf" \
        || echo "NOTE: packaged D-Bus policy differs from dbus/ (stale .deb?)"
    cmp /usr/lib/systemd/system/volfenced.service "$VOLFENCE_SRC/systemd/volfenced.service" \
        || echo "NOTE: packaged unit differs from systemd/ (stale .deb?)"
}
check deb-install t_deb_install

t_deb_policy_only() {
    # From here on only the packaged policy (/usr/share/dbus-1/system.d/) is in place.
    rm -f /etc/dbus-1/system.d/org.volfence.Agent1.conf
    expect_rc 0 reload_bus_config || return 1
    if policy_problems; then
        fail "dbus-daemon complained about the volfence policy"
    fi
}
check deb-dbus-policy-in-place t_deb_policy_only

t_unit_verify() {
    local rc
    # systemd is not PID 1 here; verify loads the unit in an offline manager all the same
    run_rc rc systemd-analyze verify /usr/lib/systemd/system/volfenced.service
    if grep -i volfenced <<< "$RUN_OUT"; then
        fail "systemd-analyze verify complains about volfenced.service"
        return 1
    fi
    [ "$rc" -eq 0 ] || fail "systemd-analyze verify exited $rc" || return 1
    # and verify does look at the unit here: a copy with a missing binary must be reported
    sed 's|^ExecStart=.*|ExecStart=/nonexistent/volfenced|' /usr/lib/systemd/system/volfenced.service \
        > "$W/volfenced.service"
    run_rc rc systemd-analyze verify "$W/volfenced.service"
    contains "$RUN_OUT" "/nonexistent/volfenced" || fail "systemd-analyze verify does not check units in this guest"
}
check unit-verify t_unit_verify

t_check_config() {
    expect_rc 0 /usr/bin/volfenced --check-config || return 1
    contains "$RUN_OUT" "configuration OK (/etc/volfence/config.toml)" || return 1
    contains "$RUN_OUT" "node $NODE, fence backend standalone" || return 1
    # and it can fail: a bad drop-in is reported with its file name
    mkdir -p /etc/volfence/config.d
    printf '[fence]\nbackend = "no-such-backend"\n' > /etc/volfence/config.d/99-vmtest-bad.toml
    expect_rc 1 /usr/bin/volfenced --check-config
    local rc=$?
    rm -f /etc/volfence/config.d/99-vmtest-bad.toml
    rmdir /etc/volfence/config.d
    [ $rc -eq 0 ] && contains "$RUN_OUT" 99-vmtest-bad.toml
}
check installed-check-config t_check_config

# ================================================================ c. sd_notify contract
# The installed unit's ExecStart= run as systemd would run a Type=notify service with
# WatchdogSec=20s (WATCHDOG_USEC set; WATCHDOG_PID unset, so it applies to whoever reads it).

notify_line() { grep -m1 -F "$1" "$NOTIFY_EVENTS"; }   # first event containing $1
notify_mainpid() { sed -n 's/^MAINPID=//p' "$NOTIFY_EVENTS"; }
notify_t() { sed -n 's/^MSG t=\([0-9.]*\) .*/\1/p' <<< "$1"; }
notify_pid() { sed -n 's/^MSG t=[0-9.]* pid=\([0-9-]*\) .*/\1/p' <<< "$1"; }

t_notify_ready() {
    local exec ready
    exec=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/volfenced.service)
    log "ExecStart=$exec"
    # a plain absolute command line: no prefixes (-@+!:) or specifiers to emulate
    [[ $exec =~ ^/[^%]*$ ]] && [ "$(wc -l <<< "$exec")" = 1 ] || fail "unexpected ExecStart=: $exec" || return 1
    rm -f "$NOTIFY_EVENTS"
    # shellcheck disable=SC2086  # ExecStart= is split into words, as systemd does
    spawn notify env -u WATCHDOG_PID WATCHDOG_USEC=20000000 \
        /usr/bin/python3 "$HERE/notify-listener.py" "$NOTIFY_EVENTS" -- $exec || return 1
    wait_for 60 eval 'grep -qE "READY=1|^EXIT=" "$NOTIFY_EVENTS" 2>/dev/null' || return 1
    cat "$NOTIFY_EVENTS"
    ready=$(notify_line READY=1) || fail "no READY=1 (daemon exited?)" || return 1
    [ "$(notify_pid "$ready")" = "$(notify_mainpid)" ] || fail "READY=1 not sent by the main pid (NotifyAccess=main)" || return 1
    # STATUS= comes in messages of its own (the status task is its only sender, so READY=1
    # cannot overwrite a newer status): one must say what the fence is doing
    wait_for 30 eval 'grep -q "STATUS=fence " "$NOTIFY_EVENTS"' || fail "no STATUS=fence ... line" || return 1
    # READY=1 comes after the name is owned, by the main process
    name_owned $AGENT_NAME || fail "READY=1 before $AGENT_NAME was owned" || return 1
    [ "$(owner_pid $AGENT_NAME)" = "$(notify_mainpid)" ] || fail "$AGENT_NAME owned by another process" || return 1
    wait_for 30 fence_held /usr/bin/volfencectl
}
check notify-ready t_notify_ready

t_notify_watchdog() {
    local ready wd t_ready t_wd
    wait_for 15 eval 'grep -qE "WATCHDOG=1|^EXIT=" "$NOTIFY_EVENTS"' || return 1
    cat "$NOTIFY_EVENTS"
    ready=$(notify_line READY=1) && wd=$(notify_line WATCHDOG=1) || fail "no WATCHDOG=1" || return 1
    t_ready=$(notify_t "$ready"); t_wd=$(notify_t "$wd")
    log "READY=1 at ${t_ready}s, first WATCHDOG=1 at ${t_wd}s"
    awk -v r="$t_ready" -v w="$t_wd" 'BEGIN { exit !(w - r <= 10) }' || fail "first WATCHDOG=1 more than 10s after READY=1" || return 1
    [ "$(notify_pid "$wd")" = "$(notify_mainpid)" ] || fail "WATCHDOG=1 not sent by the main pid" || return 1
    # fence transitions are published as STATUS=
    notify_line 'STATUS=fence held' || fail "no 'STATUS=fence held' update"
}
check notify-watchdog t_notify_watchdog

t_packaged_policy() {
    # only /usr/share/dbus-1/system.d/org.volfence.Agent1.conf is in place now
    expect_rc 0 as_nobody /usr/bin/volfencectl status || return 1
    contains "$RUN_OUT" "on node $NODE" || return 1
    expect_rc 4 as_nobody /usr/bin/volfencectl set-log-level debug || return 1
    contains "$RUN_OUT" org.freedesktop.DBus.Error.AccessDenied || return 1
    expect_rc 0 /usr/bin/volfencectl set-log-level info
}
check packaged-policy-nonroot t_packaged_policy

t_notify_stop() {
    local pid stopping
    pid=$(notify_mainpid)
    [ -n "$pid" ] && kill -0 "$pid" || fail "volfenced (pid '$pid') is not running" || return 1
    kill -TERM "$pid"
    wait_for 30 grep -q '^EXIT=' "$NOTIFY_EVENTS" || { stop_spawned notify 5; return 1; }
    wait_for 5 spawned_exited notify
    cat "$NOTIFY_EVENTS"
    stopping=$(notify_line STOPPING=1) || fail "no STOPPING=1" || return 1
    [ "$(notify_pid "$stopping")" = "$pid" ] || fail "STOPPING=1 not sent by the main pid" || return 1
    grep -qx 'EXIT=0' "$NOTIFY_EVENTS" || fail "exit code $(sed -n 's/^EXIT=//p' "$NOTIFY_EVENTS") after SIGTERM, expected 0" || return 1
    name_free $AGENT_NAME || fail "$AGENT_NAME still owned after exit"
}
check notify-stopping-and-exit-0 t_notify_stop
