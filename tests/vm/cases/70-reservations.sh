# tests/vm/cases/70-reservations.sh - NVMe reservations on a real nvmet target (Linux >= 6.13:
# run.sh's reservations boot, with nvme_core.multipath=N): two initiators in one guest with their
# own host NQN and host ID on one namespace with resv_enable, and the shared body of
# tests/nvme_resv.rs through the product's passthrough seam, checked against the model at
# every step. Needs 10-base.sh (modules, configfs).

RNQN=nqn.2026-12.io.volfence.vm:resv
RPORT=4900
RA_ID=0c1a1a1a-5e1f-4a0b-9c2d-0000000000ea
RB_ID=0c1a1a1a-5e1f-4a0b-9c2d-0000000000eb

# resv_ctrl HOSTID : a controller to the reservations subsystem for host uuid:HOSTID
resv_ctrl() {
    local fd reply
    exec {fd}<>/dev/nvme-fabrics
    echo -n "transport=tcp,traddr=127.0.0.1,trsvcid=$RPORT,nqn=$RNQN,hostnqn=nqn.2014-08.org.nvmexpress:uuid:$1,hostid=$1" >&$fd
    read -r reply <&$fd; exec {fd}>&-
    echo "$reply"
}
# resv_dev HOSTID : the namespace block device of that host's controller
resv_dev() {
    local c
    for c in $(ctrls_of "$RNQN"); do
        [ "$(cat /sys/class/nvme/$c/hostid)" = "$1" ] && basename "$(ls -d /sys/class/nvme/$c/nvme*n1 | head -1)"
    done
}

t_resv_target() {
    [ "$(cat /sys/module/nvme_core/parameters/multipath)" = N ] \
        || fail "needs nvme_core.multipath=N (run.sh's reservations boot)" || return 1
    TARGET_RESV=1 target_add "$RNQN" $RPORT 1 || return 1
    [ "$(cat $NVMET/subsystems/$RNQN/namespaces/1/resv_enable)" = 1 ] || fail "resv_enable not set" || return 1
    resv_ctrl $RA_ID && resv_ctrl $RB_ID || return 1
    udevadm settle -t 20
    [ -b "/dev/$(resv_dev $RA_ID)" ] && [ -b "/dev/$(resv_dev $RB_ID)" ] \
        || fail "no device per host: A '$(resv_dev $RA_ID)', B '$(resv_dev $RB_ID)'"
}
check resv-target-two-hosts t_resv_target

t_resv_bodies() {
    local log=$OUT/nvme-resv-tests.log rc
    VOLFENCE_REAL_KERNEL=1 VOLFENCE_RESV_DEVICES="$(resv_dev $RA_ID)=$RA_ID,$(resv_dev $RB_ID)=$RB_ID" \
        RUST_BACKTRACE=1 "$VOLFENCE_RESV_TESTS" --test-threads=1 > "$log" 2>&1
    rc=$?
    grep -E '^test |test result' "$log"
    [ $rc -eq 0 ] || { grep -A20 panicked "$log" | head -40; return 1; }
    grep -q 'test result: ok. [1-9]' "$log" || fail "no reservation body ran"
}
check resv-real-target-matches-the-model t_resv_bodies

t_resv_cleanup() {
    local c
    for c in $(ctrls_of "$RNQN"); do echo 1 > /sys/class/nvme/$c/delete_controller; done
    udevadm settle -t 20
    [ -z "$(ctrls_of "$RNQN")" ]
}
check resv-controllers-deleted t_resv_cleanup
