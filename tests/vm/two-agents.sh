# tests/vm/two-agents.sh - two agents in one guest, as two hosts (sourced by cases/60-claims.sh
# and cases/75-resv-takeover.sh): each its own node name, host NQN, host ID, state and bus (A on
# the system bus with the shipped policy, B on a private one), both on the API emulator run in
# the guest. The case sets CNQN, CPORT (its nvmet subsystem and port) and CVOL (the volume)
# before calling these.

CEMU=http://127.0.0.1:16444
CKCFG=$W/claims-kubeconfig
declare -A HOSTID=([a]=0c1a1a1a-5e1f-4a0b-9c2d-00000000000a [b]=0c1a1a1a-5e1f-4a0b-9c2d-00000000000b)
declare -A NODE_OF=([a]=vm-a [b]=vm-b)
declare -A BUS_OF=([a]=system [b]=unix:path=$W/bus-b)
other() { [ "$1" = a ] && echo b || echo a; }
hostnqn_of() { echo "nqn.2014-08.org.nvmexpress:uuid:${HOSTID[$1]}"; }

# vctl X ARGS... : volfencectl against agent X's bus
vctl() { local x=$1; shift; VOLFENCE_BUS=${BUS_OF[$x]} "$VOLFENCECTL" "$@"; }
# cemu_faults X JSON : the faults of agent X's API client
cemu_faults() {
    /usr/bin/python3 -c '
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method="PUT")
urllib.request.urlopen(req, timeout=10).read()' "$CEMU/emulator/v1/faults/${NODE_OF[$1]}" "$2"
}
ckubectl() { kubectl --kubeconfig "$CKCFG.admin" "$@"; }
# host_ctrls X : controllers to subsystem $CNQN that agent X's host NQN made
host_ctrls() {
    local c want; want=$(hostnqn_of "$1")
    for c in $(ctrls_of "$CNQN"); do
        [ "$(cat /sys/class/nvme/$c/hostnqn)" = "$want" ] && echo "$c"
    done
}
state_of() { vctl "$1" status --json 2>/dev/null | sed -n 's/^  "FenceState": "\(.*\)",\{0,1\}$/\1/p'; }
epoch_of() { vctl "$1" status --json 2>/dev/null | sed -n 's/^  "Epoch": \([0-9]*\),\{0,1\}$/\1/p'; }
# cconnect X : agent X connects $CVOL (namespace 1 of $CNQN); the reply in $RUN_OUT
cconnect() {
    local rc
    run_rc rc vctl "$1" connect "$CVOL" --nqn "$CNQN" --traddr 127.0.0.1 --trsvcid "$CPORT" --nsid 1 --json
    return "$rc"
}
# pattern_write DEV N / pattern_read DEV : one 4 KiB block with "volfence-pattern-N", O_DIRECT
pattern_write() {
    printf 'volfence-pattern-%s\n' "$2" | dd of="$1" bs=4096 count=1 conv=sync,fsync oflag=direct status=none
}
pattern_read() { dd if="$1" bs=4096 count=1 iflag=direct status=none | tr -d '\0' | head -1; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
# agent_time X PATTERN : the time (seconds since the epoch) of the last line of agent X's log
# holding PATTERN
agent_time() {
    local t; t=$(grep -F -- "$2" "$OUT/cagent-$1.log" | tail -1 | awk '{print $1}')
    [ -n "$t" ] && date -d "$t" +%s.%N
}

# two_agents_up NVME_LINES : the emulator, B's bus and both agents, each holding its lease;
# NVME_LINES go into both agents' [nvme] table
two_agents_up() {
    local nvme_lines=$1 x d
    spawn cemu "$VOLFENCE_EMULATOR" --listen 127.0.0.1:16444 --kubeconfig "$CKCFG" \
        --client vm-a --client vm-b --client admin || return 1
    wait_for 30 grep -q "listening on" "$OUT/cemu.log" || return 1
    expect_rc 0 ckubectl create namespace volfence-system || return 1
    expect_rc 0 ckubectl create namespace volfence-claims || return 1
    rm -f "$W/bus-b"
    spawn bus-b dbus-daemon --session --nofork --address="unix:path=$W/bus-b" || return 1
    wait_for 20 test -S "$W/bus-b" || return 1
    for x in a b; do
        d=$W/agent-$x
        rm -rf "$d"; mkdir -p "$d"
        cat > "$d/config.toml" <<EOT
[node]
name = "${NODE_OF[$x]}"
[daemon]
state_dir = "$d/state"
runtime_dir = "$d/run"
[fence]
backend = "kubernetes"
lease_namespace = "volfence-system"
on_lease_loss = "disconnect"
[kubernetes]
kubeconfig = "$CKCFG.${NODE_OF[$x]}"
[claims]
namespace = "volfence-claims"
[nvme]
hostnqn = "$(hostnqn_of $x)"
hostid = "${HOSTID[$x]}"
$nvme_lines
[snapshots]
mount_root = "$d/snapshots"
[dbus]
bus = "${BUS_OF[$x]}"
[metrics]
enabled = false
EOT
        spawn "cagent-$x" env RUST_LOG=info "$VOLFENCED" --config "$d/config.toml" || return 1
    done
    wait_for 90 eval '[ "$(state_of a)" = held ] && [ "$(state_of b)" = held ]' \
        || { tail -5 "$OUT/cagent-a.log" "$OUT/cagent-b.log"; return 1; }
    expect_rc 0 ckubectl get lease -n volfence-system -o 'custom-columns=NAME:.metadata.name,HOLDER:.spec.holderIdentity' || return 1
    contains "$RUN_OUT" "vm-a" && contains "$RUN_OUT" "vm-b"
}

# two_agents_down : both agents stop cleanly (exit 0), then B's bus and the emulator
two_agents_down() {
    local x
    for x in a b; do
        stop_spawned "cagent-$x" 30 || return 1
        [ "$(spawned_rc "cagent-$x")" = 0 ] || fail "cagent-$x exit $(spawned_rc "cagent-$x")" || return 1
    done
    stop_spawned bus-b 10
    stop_spawned cemu 10
}
