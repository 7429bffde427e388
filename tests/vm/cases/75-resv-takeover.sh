# tests/vm/cases/75-resv-takeover.sh - the storage-side fence on a real nvmet target (Linux >=
# 6.13, run.sh's reservations boot with nvme_core.multipath=N): two agents (../two-agents.sh)
# with reservations = "require" on one namespace with resv_enable.
#   1. A connects (registers, holds Write Exclusive - Registrants Only) and writes; B is refused.
# Then RESV_TRIALS (3) trials of steps 2-4, the roles alternating (A hung, then B, then A):
#   2. A's agent is frozen with SIGSTOP while a writer keeps writing to A's device with O_DIRECT
#      (a VM that does not know its agent is hung); no hardware watchdog.
#   3. B takes the volume over once the claim rules allow it: its preempt-and-abort cuts A off at
#      the target, so A's writes fail with reservation conflict (EBADE) before B's first write;
#      B reads A's last acknowledged pattern.
#   4. A's agent resumes: it finds its lease gone, disconnects, takes a new epoch and never
#      registers again; A's writes never succeed again.
#   5. The namespace is disabled and enabled (the target forgets every reservation): the
#      holder's routine check restores its reservation; the gap is reported.
# Needs 10-base.sh (modules, configfs, the system bus with the policy).

CNQN=nqn.2026-12.io.volfence.vm:resv-takeover
CPORT=4901
CVOL=vm-resv
RESV_TRIALS=${RESV_TRIALS:-3}
# shellcheck source=../two-agents.sh
. "$HERE/two-agents.sh"

# show X : agent X's view of the volume into $RUN_OUT
show() { expect_rc 0 vctl "$1" show "$CVOL" --json; }
# after T FILE : the lines of FILE (the writer's log) stamped after unix time T
after() { awk -v t="$1" '$1 > t' "$2"; }
# errnos : "N x errno E message, ..." for the writer's error lines on stdin
errnos() {
    awk '$2 == "err" {m = $5; for (i = 6; i <= NF; i++) m = m " " $i; print $4 " " m}' | sort | uniq -c \
        | awk '{c = $1; $1 = ""; printf "%s%d x errno%s", sep, c, $0; sep = ", "}'
}
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.0f", (b-a)*1000}'; }

t_rt_setup() {
    [ "$(cat /sys/module/nvme_core/parameters/multipath)" = N ] \
        || fail "needs nvme_core.multipath=N (run.sh's reservations boot)" || return 1
    TARGET_RESV=1 target_add "$CNQN" $CPORT 1 || return 1
    two_agents_up 'reservations = "require"'
}
check resv-takeover-two-agents t_rt_setup

t_rt_hold() {
    cconnect a || return 1
    json_assert 's["ResvSupport"] == "yes"' 's["ResvRegistered"]' 's["ResvHolder"] == "this host"' \
        's["ResvType"] == "write-exclusive-registrants-only"' 's["ResvOthers"] == []' || return 1
    pattern_write "$(json_str Device)" a-0 || fail "A cannot write" || return 1
    ! cconnect b || fail "B's connect succeeded while A holds the volume" || return 1
    contains "$RUN_OUT" org.volfence.Error.Conflict || return 1
    [ -z "$(host_ctrls b)" ] || fail "B made a controller for a refused connect"
}
check resv-holder-reserves-second-refused t_rt_hold

# hung_takeover H N : trial N. A writer keeps writing to holder H's device while H's agent is
# stopped; the other agent O takes the volume over: H's writes must be refused at the target
# before O's first write, O must read H's last acknowledged write. Then H's agent resumes: it
# disconnects, takes a new epoch, never registers again, and H's writes never succeed again.
# Prints a "resv-takeover:" and a "resv-resume:" line for the run's figures.
hung_takeover() {
    local h=$1 n=$2 o hdev odev writes stop epoch0 regs t_stop t_ok t_cas t_pre t_bw t_cont
    local first t_first got last nok nerr k losses how
    o=$(other "$h")
    writes=$OUT/resv-takeover-writes-$n.log stop=$W/rt-stop-$n
    show "$h" || return 1
    hdev=$(json_str Device)
    epoch0=$(epoch_of "$h")
    regs=$(grep -c "reservation register" "$OUT/cagent-$h.log")
    losses=$(grep -c "lease lost: disconnecting" "$OUT/cagent-$h.log")
    rm -f "$stop" "$writes"
    spawn "rt-writer-$n" /usr/bin/python3 "$HERE/odirect-writer.py" "$hdev" "$h$n" "$writes" "$stop" || return 1
    wait_for 30 eval '[ "$(cat "$writes" 2>/dev/null | grep -c " ok ")" -ge 3 ]' || return 1
    kill -STOP "$(spawned_pid "cagent-$h")" || return 1
    t_stop=$(date +%s.%N)
    # O retries as an orchestrator would: Conflict until H's lease has run out by the rules.
    while ! cconnect "$o"; do
        contains "$RUN_OUT" org.volfence.Error.Conflict || return 1
        [ "$(elapsed "$t_stop" "$(date +%s.%N)" | cut -d. -f1)" -lt 90 ] || fail "no takeover within 90 s" || return 1
        nap 0.5
    done
    t_ok=$(date +%s.%N)
    odev=$(json_str Device)
    json_assert "s['ClaimHolder'].startswith('${NODE_OF[$o]}/')" 's["ResvHolder"] == "this host"' \
        's["ResvOthers"] == []' || return 1
    # Hung, H's agent did nothing: its controller is still there; only the target stops H.
    [ -n "$(host_ctrls "$h")" ] || fail "$h's controller is gone: this trial proves nothing about the target" || return 1
    got=$(pattern_read "$odev")
    t_bw=$(date +%s.%N)
    pattern_write "$odev" "$o$n-0" || fail "$o cannot write" || return 1
    t_cas=$(agent_time "$o" "taken over from") || fail "no takeover line in cagent-$o.log" || return 1
    t_pre=$(agent_time "$o" "reservation preempt_abort") || fail "no preempt-and-abort in cagent-$o.log" || return 1
    nap 1   # H's writer meets the reservation
    first=$(grep -m1 ' err ' "$writes") || fail "$h's writes still succeed after the takeover" || return 1
    t_first=${first%% *}
    # Refused by the reservation (EBADE, 52), not by a lost path; a write in flight at the
    # preempt-and-abort is aborted (EIO, 5), and the next one meets the reservation.
    how=$(awk '$2 == "err" {e = e $4 " "; if (++k == 2) exit} END {print e}' "$writes")
    case "$how" in
        "52 "*) how="reservation conflict (EBADE)" ;;
        "5 52 ") how="aborted in flight (EIO), then reservation conflict (EBADE)" ;;
        *) fail "$h's first failed writes: errno $how(expected 52, EBADE, or 5 then 52)"; return 1 ;;
    esac
    last=$(awk '$2 == "ok" {n = $3} $2 == "err" {exit} END {print n}' "$writes")
    [ "$got" = "volfence-pattern-$h$n-$last" ] || fail "$o read '$got', $h's last acknowledged write was $last" || return 1
    awk -v f="$t_first" -v b="$t_bw" 'BEGIN{exit !(f < b)}' \
        || fail "$h's first refused write at $t_first, after $o's first write at $t_bw" || return 1
    nok=$(grep -c ' ok ' "$writes"); nerr=$(grep -c ' err ' "$writes")
    echo "resv-takeover: trial $n, ${NODE_OF[$h]} hung -> ${NODE_OF[$o]}: takeover CAS $(elapsed "$t_stop" "$t_cas") s after SIGSTOP, preempt-and-abort +$(ms_between "$t_cas" "$t_pre") ms, Connect returned +$(ms_between "$t_cas" "$t_ok") ms; ${NODE_OF[$h]}'s first refused write +$(ms_between "$t_cas" "$t_first") ms after the CAS ($how), $(ms_between "$t_first" "$t_bw") ms before ${NODE_OF[$o]}'s first write; ${NODE_OF[$o]} read the last acknowledged write ($last of $nok, $nerr refused so far)"

    # H's agent resumes: its lease ran out while it was stopped.
    t_cont=$(date +%s.%N)
    kill -CONT "$(spawned_pid "cagent-$h")" || return 1
    wait_for 60 test -z "$(host_ctrls "$h")" || fail "$h kept its controller: $(host_ctrls "$h")" || return 1
    wait_for 60 eval '[ "$(state_of '"$h"')" = held ]' || return 1
    [ "$(epoch_of "$h")" -gt "$epoch0" ] || fail "$h's epoch $(epoch_of "$h"), was $epoch0" || return 1
    [ "$(grep -c "lease lost: disconnecting 1 volume(s)" "$OUT/cagent-$h.log")" -gt "$losses" ] \
        || fail "$h did not report the disconnect" || return 1
    expect_rc 0 vctl "$h" list --json || return 1
    [ "$RUN_OUT" = "[]" ] || fail "$h still lists volumes: $RUN_OUT" || return 1
    nap 5   # two routine checks, and H's reconcile at its new epoch, have run
    [ -z "$(host_ctrls "$h")" ] || fail "$h reconnected: $(host_ctrls "$h")" || return 1
    [ "$(grep -c "reservation register" "$OUT/cagent-$h.log")" = "$regs" ] \
        || fail "$h registered again after it resumed: $(grep "reservation register" "$OUT/cagent-$h.log" | tail -1)" || return 1
    show "$o" || return 1
    json_assert 's["ResvHolder"] == "this host"' 's["ResvOthers"] == []' || return 1
    touch "$stop"
    wait_for 10 spawned_exited "rt-writer-$n" || return 1
    ! after "$t_first" "$writes" | grep -q ' ok ' || fail "$h wrote again after a refusal: $(after "$t_first" "$writes" | grep -m1 ' ok ')" || return 1
    k=$(after "$t_cont" "$writes" | grep -c ' err ')
    [ "$k" -gt 0 ] || fail "the writer made no attempt after $h resumed" || return 1
    echo "resv-resume: trial $n, ${NODE_OF[$h]} disconnected $(elapsed "$t_cont" "$(agent_time "$h" "lease lost: disconnecting")") s after SIGCONT, epoch $epoch0 -> $(epoch_of "$h"), never registered again; its $k writes after SIGCONT all failed ($(after "$t_cont" "$writes" | errnos))"
}

t_rt_first() { hung_takeover a 1; }
STEP_TIMEOUT=300 check resv-hung-holder-refused-at-target t_rt_first

t_rt_trials() {
    # Trial 1 left B the holder; the roles alternate.
    local n h=b
    for n in $(seq 2 "$RESV_TRIALS"); do
        hung_takeover "$h" "$n" || return 1
        h=$(other "$h")
    done
}
STEP_TIMEOUT=600 check resv-hung-holder-trials t_rt_trials

# holder : the agent (a or b) holding the volume now
holder() { local x; for x in a b; do [ -n "$(host_ctrls "$x")" ] && echo "$x"; done; }

t_rt_ns_restart() {
    local ns=$NVMET/subsystems/$CNQN/namespaces/1 x bdev before t_en t_back
    x=$(holder)
    [ "${#x}" = 1 ] || fail "no single holder: '$x'" || return 1
    show "$x" || return 1
    bdev=$(json_str Device)
    before=$(grep -c "reservation acquire" "$OUT/cagent-$x.log")
    # A target restart forgets every reservation; nvmet does on namespace disable.
    echo 0 > "$ns/enable" && echo 1 > "$ns/enable" || return 1
    t_en=$(date +%s.%N)
    wait_for 30 eval '[ "$(grep -c "reservation acquire" "$OUT/cagent-'"$x"'.log")" -gt '"$before"' ]' \
        || fail "$x never restored its reservation" || return 1
    t_back=$(agent_time "$x" "reservation acquire")
    show "$x" || return 1
    json_assert 's["ResvRegistered"]' 's["ResvHolder"] == "this host"' 's["ResvOthers"] == []' || return 1
    [ "$(json_str Device)" = "$bdev" ] || fail "$x's device changed: $(json_str Device), was $bdev" || return 1
    pattern_write "$bdev" "$x-restored" && [ "$(pattern_read "$bdev")" = "volfence-pattern-$x-restored" ] \
        || fail "$x cannot write after the restore" || return 1
    echo "resv-restore: namespace disabled and enabled; ${NODE_OF[$x]}'s reservation back $(elapsed "$t_en" "$t_back") s later (routine check every 2 s)"
}
check resv-namespace-restart-restored t_rt_ns_restart

t_rt_stop() {
    local x; x=$(holder)
    [ "${#x}" = 1 ] || fail "no single holder: '$x'" || return 1
    vctl "$x" disconnect "$CVOL" || return 1
    [ -z "$(ctrls_of "$CNQN")" ] || fail "controllers left: $(ctrls_of "$CNQN")" || return 1
    grep -q "reservation key .* unregistered" "$OUT/cagent-$x.log" || fail "$x did not unregister" || return 1
    expect_rc 0 ckubectl get lease -n volfence-claims -o name || return 1
    [ -z "$RUN_OUT" ] || contains "$RUN_OUT" "No resources" || fail "claims left: $RUN_OUT" || return 1
    # The reservation's share of each Connect, from the agents' own lines: A's first Connect
    # registered and acquired; every later one took over (register, preempt-and-abort).
    local steps='reservation step of Connect took [0-9.]* ms' plain takeovers
    plain=$(grep -o "$steps" "$OUT/cagent-a.log" | head -1 | awk '{print $6}')
    takeovers=$( { grep -o "$steps" "$OUT/cagent-a.log" | tail -n +2; grep -o "$steps" "$OUT/cagent-b.log"; } \
        | awk '{print $6}' | sort -n | paste -sd' ' -)
    [ -n "$plain" ] && [ -n "$takeovers" ] || fail "no reservation step lines in the agents' logs" || return 1
    echo "resv-connect: the reservation step of Connect (agent work and the target's answers): register + acquire $plain ms; takeovers (register + preempt-and-abort): $takeovers ms"
    two_agents_down
}
check resv-takeover-agents-stop t_rt_stop
