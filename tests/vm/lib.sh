# tests/vm/lib.sh - helpers for the guest side of the VM tier (sourced by guest.sh).
#
# Under TCG every fork+exec costs 50-100 ms, so the helpers that loop (check's watchdog,
# wait_for) sleep with a bash builtin instead of forking /bin/sleep.
#
# Globals set by guest.sh before sourcing: OUT (shared log dir), W (guest scratch, tmpfs).

LOG=$OUT/guest-detail.log
PASS=0
FAIL=0

# ---------------------------------------------------------------- time
now_us() { echo "${EPOCHREALTIME/./}"; }
# secs_since T_US : seconds (two decimals) since the microsecond stamp T_US
secs_since() {
    local d=$(( $(now_us) - $1 ))
    printf '%d.%02d' $((d / 1000000)) $((d % 1000000 / 10000))
}
uptime_s() { local u; read -r u _ < /proc/uptime; echo "$u"; }

# nap SECONDS : sleep without forking (read with a timeout on a FIFO nobody writes to)
exec {NAP_FD}<> <(:)
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }

# ---------------------------------------------------------------- assertions
log() { echo "[$(uptime_s)] $*"; }
fail() { echo "FAILED: $*"; return 1; }

# wait_for SECONDS CMD... : run CMD every 0.1 s until it succeeds; fail after SECONDS.
wait_for() {
    local secs=$1; shift
    local deadline=$(( $(now_us) + secs * 1000000 ))
    while :; do
        "$@" && return 0
        [ "$(now_us)" -ge "$deadline" ] && { echo "wait_for: gave up after ${secs}s: $*"; return 1; }
        nap 0.1
    done
}

# run_rc VAR CMD... : run CMD, show its output in the detail log, keep stdout+stderr in
# $RUN_OUT and the exit code in VAR (so a test can assert on both).
RUN_OUT=
run_rc() {
    local -n _rc=$1; shift
    local t0
    t0=$(now_us)
    echo "\$ $*"
    RUN_OUT=$("$@" 2>&1); _rc=$?
    [ -n "$RUN_OUT" ] && printf '%s\n' "$RUN_OUT" | sed 's/^/  | /'
    echo "  -> exit $_rc ($(secs_since "$t0")s)"
}

# expect_rc WANT CMD... : CMD must exit with WANT; its output is left in $RUN_OUT.
expect_rc() {
    local want=$1 got; shift
    run_rc got "$@"
    [ "$got" -eq "$want" ] || fail "expected exit $want, got $got: $*"
}

# contains TEXT NEEDLE : fixed-string match, with a readable failure
contains() { grep -qF -- "$2" <<< "$1" || fail "output does not contain '$2'"; }

# json_assert PYTHON-EXPR... : every EXPR must be true, with s = the JSON in $RUN_OUT and
# e = the environment (pass values as VAR=value json_assert ...). One python3 for all: under
# TCG its start-up costs seconds. Debian's /usr/bin/python3, not the pyenv one on PATH.
json_assert() {
    /usr/bin/python3 -c '
import json, os, sys
s, e, bad = json.loads(sys.stdin.read()), os.environ, 0
for expr in sys.argv[1:]:
    ok = eval(expr, {"s": s, "e": e})
    print(("ok:     " if ok else "FAILED: ") + expr)
    bad += not ok
sys.exit(1 if bad else 0)' "$@" <<< "$RUN_OUT"
}
# json_str KEY : a top-level string value of the pretty-printed JSON in $RUN_OUT
json_str() { sed -n "s/^  \"$1\": \"\(.*\)\",\{0,1\}\$/\1/p" <<< "$RUN_OUT"; }

# as_nobody CMD... : run CMD as uid/gid 65534 with no supplementary groups
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }

# ---------------------------------------------------------------- the check framework
# check NAME FUNC [ARGS...] : run FUNC in a subshell (output -> detail log) under a watchdog
# of STEP_TIMEOUT seconds. State that later checks need must go through files in $W.
# AFTER_FAIL, if a case sets it, names a function run after each of its checks that fails: it
# puts back what the case's later checks start from, so one failure is reported once instead of
# again by every check that finds its leftovers.
check() {
    local name=$1; shift
    local t0 pid rc deadline timed_out=0
    t0=$(now_us)
    echo "=== [$name] $* (uptime $(uptime_s)s)" >> "$LOG"
    (
        if [ -n "${TRACE:-}" ]; then PS4='+ $(uptime_s) '; set -x; fi
        "$@"
    ) >> "$LOG" 2>&1 &
    pid=$!
    deadline=$(( t0 + STEP_TIMEOUT * 1000000 ))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$(now_us)" -ge "$deadline" ]; then
            echo "!!! [$name] timed out after ${STEP_TIMEOUT}s" >> "$LOG"
            kill -9 "$pid" 2>/dev/null
            timed_out=1
            break
        fi
        nap 0.1
    done
    wait "$pid"; rc=$?
    [ $timed_out = 1 ] && rc=124
    if [ $rc -eq 0 ]; then
        PASS=$((PASS + 1)); echo "PASS $name ($(secs_since "$t0")s)"
        echo "--- [$name] PASS" >> "$LOG"
    else
        FAIL=$((FAIL + 1)); echo "FAIL $name (rc=$rc, $(secs_since "$t0")s)"
        echo "--- [$name] FAIL rc=$rc" >> "$LOG"
        echo "--- last lines of [$name] in $LOG:"
        awk -v h="=== [$name] " 'index($0, h) == 1 {p = 1} p' "$LOG" | tail -n 25 | sed 's/^/    /'
        if [ -n "${AFTER_FAIL:-}" ]; then
            echo "=== [$name] after the failure: $AFTER_FAIL" >> "$LOG"
            "$AFTER_FAIL" >> "$LOG" 2>&1 || echo "    ($AFTER_FAIL could not restore the case's state: see $LOG)"
        fi
    fi
}

# ---------------------------------------------------------------- background processes
# spawn NAME CMD... : start CMD in the background, stdout+stderr to $OUT/NAME.log. Its pid
# goes to $W/NAME.pid and, once it exits, its exit code to $W/NAME.rc. The recording
# survives the check's subshell, so a later check can signal it and read the exit code.
spawn() {
    local name=$1; shift
    rm -f "$W/$name.pid" "$W/$name.rc"
    : > "$OUT/$name.log"
    (
        "$@" >> "$OUT/$name.log" 2>&1 &
        echo $! > "$W/$name.pid"
        wait $!
        echo $? > "$W/$name.rc"
    ) &
    wait_for 5 test -s "$W/$name.pid" || return 1
    log "spawned $name: pid $(spawned_pid "$name"): $*"
}
spawned_pid() { cat "$W/$1.pid" 2>/dev/null; }
spawned_exited() { [ -s "$W/$1.rc" ]; }
spawned_rc() { cat "$W/$1.rc" 2>/dev/null; }
spawned_running() { [ -s "$W/$1.pid" ] && ! spawned_exited "$1" && kill -0 "$(spawned_pid "$1")" 2>/dev/null; }

# stop_spawned NAME SECONDS : SIGTERM, wait up to SECONDS for the exit, SIGKILL after that.
# Returns 0 if it exited by itself in time; its exit code is then spawned_rc NAME.
stop_spawned() {
    local name=$1 secs=$2 pid
    pid=$(spawned_pid "$name") || return 1
    spawned_exited "$name" || kill -TERM "$pid" 2>/dev/null
    wait_for "$secs" spawned_exited "$name" && return 0
    kill -KILL "$pid" 2>/dev/null
    wait_for 5 spawned_exited "$name"
    return 1
}

# ---------------------------------------------------------------- D-Bus
# start_system_bus : a system bus like the distribution's (same system.conf, so the same
# system.d/ policy directories), in the foreground of a spawned job so its warnings
# (policy parse errors, rejected messages) land in $OUT/dbus-daemon.log instead of syslog.
start_system_bus() {
    mkdir -p /run/dbus /var/lib/dbus
    [ -s /etc/machine-id ] || dbus-uuidgen --ensure=/etc/machine-id || return 1
    [ -s /var/lib/dbus/machine-id ] || cp /etc/machine-id /var/lib/dbus/machine-id
    rm -f /run/dbus/system_bus_socket /run/dbus/pid
    spawn dbus-daemon dbus-daemon --system --nofork --nosyslog || return 1
    wait_for 20 test -S /run/dbus/system_bus_socket
}

# ---------------------------------------------------------------- journald
# start_journald : the journal a service logs to under systemd, volatile (/run/log/journal) and
# without rate limits (the checks log in bursts). An agent configured with log.target =
# "journald" writes to it as it would in production: its log costs what it costs there, not a
# write over 9p to the host.
start_journald() {
    [ -s /etc/machine-id ] || dbus-uuidgen --ensure=/etc/machine-id || return 1
    mkdir -p /etc/systemd/journald.conf.d /run/systemd/journal
    printf '[Journal]\nStorage=volatile\nRateLimitIntervalSec=0\nForwardToSyslog=no\nForwardToConsole=no\nForwardToWall=no\n' \
        > /etc/systemd/journald.conf.d/90-vmtest.conf
    spawn journald /lib/systemd/systemd-journald || return 1
    wait_for 20 test -S /run/systemd/journal/socket
}
# ---------------------------------------------------------------- NVMe
NVMET=/sys/kernel/config/nvmet
# target_add NQN PORT NSIDS... : nvmet subsystem NQN, open to any host, exported on 127.0.0.1
# PORT with file-backed namespaces $W/nvmet/PORT-NSID.img (buffered_io: no O_DIRECT on tmpfs);
# TARGET_RESV=1 enables reservations on them
target_add() {
    local nqn=$1 port=$2 n; shift 2
    local s=$NVMET/subsystems/$nqn p=$NVMET/ports/$port
    mkdir -p "$W/nvmet" && mkdir "$s" && echo 1 > "$s/attr_allow_any_host" || return 1
    for n in "$@"; do
        truncate -s 64M "$W/nvmet/$port-$n.img"
        mkdir "$s/namespaces/$n" && echo -n "$W/nvmet/$port-$n.img" > "$s/namespaces/$n/device_path" \
            && echo 1 > "$s/namespaces/$n/buffered_io" || return 1
        # TARGET_RESV=1: reservations (Linux >= 6.13), which must be enabled before the namespace
        if [ "${TARGET_RESV:-0}" = 1 ]; then echo 1 > "$s/namespaces/$n/resv_enable" || return 1; fi
        echo 1 > "$s/namespaces/$n/enable" || return 1
    done
    if [ ! -d "$p" ]; then
        mkdir "$p" && echo tcp > "$p/addr_trtype" && echo ipv4 > "$p/addr_adrfam" \
            && echo 127.0.0.1 > "$p/addr_traddr" && echo "$port" > "$p/addr_trsvcid" || return 1
    fi
    ln -s "$s" "$p/subsystems/$nqn"
}
# ctrls_of NQN : the NVMe controllers (nvmeN) connected to subsystem NQN
ctrls_of() { grep -lx -- "$1" /sys/class/nvme/nvme*/subsysnqn 2>/dev/null | awk -F/ '{print $5}'; }
# nvme_bodies LOG [FILTER ARGS...] : the shared test bodies (tests/nvme.rs) against this kernel;
# every one the filter selects must run and pass, and at least one must be selected.
nvme_bodies() {
    local log=$1; shift
    [ -s /etc/nvme/hostnqn ] || { mkdir -p /etc/nvme; nvme gen-hostnqn > /etc/nvme/hostnqn; }
    VOLFENCE_REAL_KERNEL=1 VOLFENCE_NVMET_DIR=$W/nvmet RUST_BACKTRACE=1 \
        "$VOLFENCE_NVME_TESTS" --test-threads=1 "$@" > "$log" 2>&1
    local rc=$?
    grep -E '^test |test result' "$log"
    [ $rc -eq 0 ] || { grep -B2 -A12 panicked "$log" | head -60; return 1; }
    local n; n=$("$VOLFENCE_NVME_TESTS" --list "$@" 2>/dev/null | grep -c ': test$')
    [ "$n" -gt 0 ] && grep -q "test result: ok. $n passed; 0 failed; 0 ignored" "$log"
}
# agent_journal [JOURNALCTL ARGS...] : the agent's journal entries, messages only
agent_journal() { journalctl -q --no-pager -t volfenced -o cat "$@"; }

bus_call() {   # bus_call METHOD ARGS... : call the bus driver, print the reply
    dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
        "org.freedesktop.DBus.$@"
}
name_owned() { bus_call NameHasOwner "string:$1" 2>/dev/null | grep -q 'boolean true'; }
name_free() { bus_call NameHasOwner "string:$1" 2>/dev/null | grep -q 'boolean false'; }
reload_bus_config() { bus_call ReloadConfig > /dev/null; }
# policy_problems : what dbus-daemon said about the volfence policy file. It does not refuse
# a policy it cannot parse: it logs "Encountered error ... while parsing '<file>'" (or
# "Unknown username ...") and carries on without it.
policy_problems() {
    grep -E "org\.volfence\.Agent1\.conf|Unknown (user|group)name|Unable to reload" "$OUT/dbus-daemon.log"
}
