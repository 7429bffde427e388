# tests/vm/cases/60-claims.sh - ReadWriteOnce across hosts on the real kernel: two agents in one
# guest, each its own node name, host NQN, host ID, state and bus (A on the system bus with the
# shipped policy, B on a private one), one real nvmet namespace, the API emulator in the guest.
# Booted with nvme_core.multipath=N (run.sh's two-host boot) so each agent's device is its own.
# A connects and writes; B is refused; A is partitioned from the API server, fences itself
# (its controller deleted) before B takes over; B reads A's data; A heals with a new epoch and
# does not reconnect. Then failover trials, the holder alternating. Needs 10-base.sh (modules,
# configfs, the system bus with the policy); the agents come from ../two-agents.sh.

CNQN=nqn.2024-01.io.volfence.vm:claims
CPORT=4800
CVOL=vm-shared
FAILOVER_TRIALS=${FAILOVER_TRIALS:-5}
# shellcheck source=../two-agents.sh
. "$HERE/two-agents.sh"

t_claims_setup() {
    [ "$(cat /sys/module/nvme_core/parameters/multipath)" = N ] \
        || fail "needs nvme_core.multipath=N (run.sh's two-host boot)" || return 1
    target_add "$CNQN" $CPORT 1 || return 1
    two_agents_up ""
}
check claims-two-agents-hold-their-leases t_claims_setup

t_claims_conflict() {
    cconnect a || return 1
    local dev; dev=$(json_str Device)
    json_assert 's["ClaimHolder"].startswith("vm-a/")' 's["ClaimEpoch"] == 1' || return 1
    [ "$(host_ctrls a | wc -l)" = 1 ] || fail "agent A has $(host_ctrls a | wc -l) controllers" || return 1
    [ -b "$dev" ] && pattern_write "$dev" 0 || fail "cannot write to $dev" || return 1
    # B is refused, naming the holder; the operator sees the claim with kubectl.
    ! cconnect b || fail "B's connect succeeded while A holds the volume" || return 1
    contains "$RUN_OUT" org.volfence.Error.Conflict && contains "$RUN_OUT" "vm-a" || return 1
    [ -z "$(host_ctrls b)" ] || fail "B made a controller for a refused connect" || return 1
    expect_rc 0 ckubectl get lease -n volfence-claims -l volfence.io/holder-node=vm-a -o name || return 1
    contains "$RUN_OUT" "lease.coordination.k8s.io/" || return 1
    expect_rc 0 vctl b claims --all || return 1
    contains "$RUN_OUT" "$CVOL" && contains "$RUN_OUT" "vm-a"
}
check claims-second-host-refused t_claims_conflict

# failover H N : the holder H is partitioned from the API server; the other agent retries its
# Connect until it takes the volume over. H must have fenced itself (its controller gone)
# first; the new holder reads H's last pattern (N) and writes its own (N+1); H heals, takes a
# new epoch and does not reconnect. Prints one "failover" line for the run's figures.
failover() {
    local h=$1 n=$2 o cut t_ok t_fenced tries=0 hdev odev epoch0 epoch1 got
    o=$(other "$h")
    epoch0=$(epoch_of "$h")
    cemu_faults "$h" '{"partition": true}' || return 1
    cut=$(date +%s.%N)
    while :; do
        cconnect "$o" && break
        contains "$RUN_OUT" org.volfence.Error.Conflict || return 1
        tries=$((tries + 1))
        [ "$(elapsed "$cut" "$(date +%s.%N)" | cut -d. -f1)" -lt 60 ] || fail "no takeover within 60 s" || return 1
        nap 0.2
    done
    t_ok=$(date +%s.%N)
    odev=$(json_str Device)
    # At that moment the old holder's controller is already gone.
    [ -z "$(host_ctrls "$h")" ] || fail "$h still has controller $(host_ctrls "$h") when $o took over" || return 1
    [ "$(state_of "$h")" = fenced ] || fail "$h is $(state_of "$h") when $o took over" || return 1
    t_fenced=$(agent_time "$h" "-> fenced") || fail "no fenced transition in cagent-$h.log" || return 1
    awk -v f="$t_fenced" -v t="$t_ok" 'BEGIN{exit !(f < t)}' || fail "$h fenced at $t_fenced, after the takeover at $t_ok" || return 1
    json_assert "s['ClaimHolder'].startswith('${NODE_OF[$o]}/')" || return 1
    got=$(pattern_read "$odev")
    [ "$got" = "volfence-pattern-$n" ] || fail "$o read '$got', expected volfence-pattern-$n" || return 1
    pattern_write "$odev" $((n + 1)) || fail "$o cannot write" || return 1
    echo "failover: ${NODE_OF[$h]} -> ${NODE_OF[$o]}: partition to Connect $(elapsed "$cut" "$t_ok") s ($tries refusals), ${NODE_OF[$h]} fenced at $(elapsed "$cut" "$t_fenced") s"
    # H heals: a new epoch, the claim is gone, it does not reconnect.
    cemu_faults "$h" '{}' || return 1
    wait_for 60 eval '[ "$(state_of '"$h"')" = held ]' || return 1
    epoch1=$(epoch_of "$h")
    [ "$epoch1" -gt "$epoch0" ] || fail "$h's epoch $epoch1 after the loss, was $epoch0" || return 1
    nap 3   # its reconcile at the new holding has run
    [ -z "$(host_ctrls "$h")" ] || fail "$h reconnected: $(host_ctrls "$h")" || return 1
    expect_rc 0 vctl "$h" list --json || return 1
    [ "$RUN_OUT" = "[]" ] || fail "$h still lists volumes: $RUN_OUT" || return 1
    expect_rc 0 ckubectl get lease -n volfence-claims -l "volfence.io/holder-node=${NODE_OF[$o]}" -o name || return 1
    contains "$RUN_OUT" "lease.coordination.k8s.io/"
}

t_claims_takeover() {
    failover a 0 || return 1
    # The old holder's VolumeLost is for people: the Event is in the claims namespace.
    expect_rc 0 ckubectl get events -n volfence-claims --field-selector reason=VolumeTakenOver -o name || return 1
    contains "$RUN_OUT" "event/"
}
check claims-partitioned-holder-fences-before-takeover t_claims_takeover

t_claims_failover_trials() {
    # The first takeover left B the holder, with pattern 1 written; trial i moves the volume
    # from the holder, which wrote pattern i, to the other, which writes i + 1.
    local i h=b
    for i in $(seq 1 "$FAILOVER_TRIALS"); do
        failover "$h" "$i" || return 1
        h=$(other "$h")
    done
}
STEP_TIMEOUT=600 check claims-failover-trials t_claims_failover_trials

t_claims_stop() {
    local x h
    for x in a b; do
        h=$(vctl "$x" list --json | grep -c "\"$CVOL\"")
        [ "$h" = 0 ] || vctl "$x" disconnect "$CVOL" || return 1
    done
    [ -z "$(ctrls_of "$CNQN")" ] || fail "controllers left: $(ctrls_of "$CNQN")" || return 1
    expect_rc 0 ckubectl get lease -n volfence-claims -o name || return 1
    [ -z "$RUN_OUT" ] || contains "$RUN_OUT" "No resources" || fail "claims left: $RUN_OUT" || return 1
    two_agents_down
}
check claims-agents-release-and-stop t_claims_stop
