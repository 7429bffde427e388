# tests/vm/cases/50-snapshot.sh - online LVM snapshots with real LVM on the virtio disk: ext4 and
# xfs origins, thick and thin; the executor sees what was written before the snapshot and not
# after; the same request id twice is one job; SIGKILL of the agent while Running; the COW guard;
# keep + release; a failed snapshot of a claimed volume recorded as a Kubernetes Event on the
# claim (agent on the Kubernetes fence, API emulator in the guest); and captures of real `lvs`
# JSON and mountinfo for the parser fixtures.
# Needs 10-base.sh (disk, modules, system bus) and 20-agent.sh (helpers).

SVG=vgsnap
EXO=$W/snapexec

t_lvm_setup() {
    local disk; disk=$(readlink -f /dev/disk/by-id/virtio-lvmdisk)
    # never scan NVMe namespaces (a target torn down under them would hang LVM)
    if [ -f /etc/lvm/lvm.conf ]; then
        grep -q 'global_filter = \[ "r|^/dev/nvme|"' /etc/lvm/lvm.conf ||
            sed -i '/^devices {/a\	global_filter = [ "r|^/dev/nvme|", "a|.*|" ]' /etc/lvm/lvm.conf
    else
        mkdir -p /etc/lvm && printf 'devices {\n\tglobal_filter = [ "r|^/dev/nvme|", "a|.*|" ]\n}\n' > /etc/lvm/lvm.conf
    fi
    wipefs -a -q "$disk"
    pvcreate -q -y "$disk" && vgcreate -q "$SVG" "$disk" || return 1
    lvcreate -q -y -L 96M -n ext "$SVG" && mkfs.ext4 -q "/dev/$SVG/ext" || return 1
    lvcreate -q -y -L 320M -n xfs "$SVG" && mkfs.xfs -q "/dev/$SVG/xfs" || return 1
    lvcreate -q -y -L 400M -T "$SVG/pool" && lvcreate -q -y -V 128M -T "$SVG/pool" -n thin && mkfs.ext4 -q "/dev/$SVG/thin" || return 1
    local lv
    for lv in ext xfs thin; do
        mkdir -p "$W/o-$lv" && mount "/dev/$SVG/$lv" "$W/o-$lv" || return 1
        echo "before-$lv" > "$W/o-$lv/before.txt"; sync
    done
    mkdir -p "$EXO" "$OUT/lvm-capture"
    lvs --reportformat json --units b --nosuffix -a -o vg_name,lv_name,lv_attr,lv_size,origin,pool_lv,data_percent,lv_path "$SVG" > "$OUT/lvm-capture/lvs-origins.json"
    lvs --reportformat json --units b --nosuffix -a -o vg_name,lv_name,lv_attr,lv_size,origin,pool_lv,data_percent,lv_path novg > "$OUT/lvm-capture/lvs-novg.json" 2> "$OUT/lvm-capture/lvs-novg.stderr"
    echo $? > "$OUT/lvm-capture/lvs-novg.rc"
    printf '[snapshots]\nexecutor = ["%s", "%s", "{mountpoint}", "{request_id}"]\nexecutor_timeout = "300s"\ndefault_size = "48M"\n[metrics]\nlisten = "127.0.0.1:9480"\n' \
        "$HERE/snapshot-executor.sh" "$EXO" > "$W/snap-agent.toml"
    rm -rf /var/lib/volfence /run/volfence
    : > "$OUT/restart-times.txt"
    spawn sagent env RUST_LOG=info "$VOLFENCED" --config "$W/snap-agent.toml" || return 1
    wait_for 60 fence_held || { tail -20 "$OUT/sagent.log"; return 1; }
}
check lvm-setup-and-agent t_lvm_setup

job_running() { "$VOLFENCECTL" snapshot status "$1" --json 2>/dev/null | grep -q '"Message": "executor running"'; }
no_leftovers() {
    ! grep -q " /run/volfence/snapshots/" /proc/self/mountinfo || { echo "mount left: $(grep /run/volfence/snapshots /proc/self/mountinfo)"; return 1; }
    ! lvs --noheadings -o lv_name "$SVG" | grep -q vfsnap- || { echo "snapshot LV left: $(lvs --noheadings -o lv_name $SVG | grep vfsnap-)"; return 1; }
}
runs_of() { grep -c "^$1 " "$EXO/runs" 2>/dev/null || echo 0; }

# snap_roundtrip ID LV : start, write after.txt to the origin, let the executor read, check
snap_roundtrip() {
    local id=$1 lv=$2 t0
    t0=$(now_us)
    spawn "w-$id" "$VOLFENCECTL" snapshot start "$id" "$SVG" "$lv" --wait --json || return 1
    wait_for 120 job_running "$id" || { cat "$OUT/w-$id.log"; return 1; }
    echo "$lv: running after $(secs_since "$t0")s"
    grep " /run/volfence/snapshots/vfsnap-$id " /proc/self/mountinfo
    echo "after-$lv" > "$W/o-$lv/after.txt"; sync
    touch "$EXO/go-$id"
    wait_for 120 spawned_exited "w-$id" || return 1
    cat "$OUT/w-$id.log"
    [ "$(spawned_rc "w-$id")" = 0 ] || return 1
    grep -q '"Phase": "succeeded"' "$OUT/w-$id.log" || return 1
    # progress on stderr while it runs; the end once, as the summary
    grep -q "^$id: running — " "$OUT/w-$id.log" || fail "no progress line for running" || return 1
    ! grep -q "^$id: succeeded" "$OUT/w-$id.log" || fail "the end printed as progress too" || return 1
    [ "$(cat "$EXO/$id.before")" = "before-$lv" ] || fail "executor did not see before.txt" || return 1
    [ ! -e "$EXO/$id.after" ] || fail "executor saw a file written after the snapshot" || return 1
    rm -f "$W/o-$lv/after.txt"
    no_leftovers
}
t_ext_thick() { snap_roundtrip r-ext ext; }
check snapshot-ext4-thick t_ext_thick
t_xfs_thick() { snap_roundtrip r-xfs xfs; }
check snapshot-xfs-thick t_xfs_thick
t_ext_thin() { snap_roundtrip r-thin thin; }
check snapshot-ext4-thin t_ext_thin

t_step_times() {
    # time per phase, from the agent's own log (create, mount, executor, cleanup)
    grep -o 'snapshot step [a-z]* took [0-9.]*s' "$OUT/sagent.log" | tee "$OUT/snapshot-steps.txt"
    grep -q 'step create' "$OUT/snapshot-steps.txt" && grep -q 'step cleanup' "$OUT/snapshot-steps.txt"
}
check snapshot-step-times t_step_times

t_same_request() {
    expect_rc 0 "$VOLFENCECTL" snapshot start r-ext "$SVG" ext --json || return 1
    contains "$RUN_OUT" '"Phase": "succeeded"' || return 1
    [ "$(runs_of r-ext)" = 1 ] || fail "executor ran $(runs_of r-ext) times for r-ext" || return 1
    expect_rc 1 "$VOLFENCECTL" snapshot start r-ext "$SVG" xfs || return 1
    contains "$RUN_OUT" "already used for $SVG/ext"
}
check snapshot-same-request-id-one-job t_same_request

# restart_after_kill WHAT : SIGKILL the snapshot agent, start it again and record in
# $OUT/restart-times.txt how long it took until the fence was held (its D-Bus answers).
restart_after_kill() {
    local pid t0 t1
    pid=$(spawned_pid sagent)
    kill -KILL "$pid"
    wait_for 10 spawned_exited sagent || return 1
    t0=$(date +%s.%N)
    spawn sagent env RUST_LOG=info "$VOLFENCED" --config "$W/snap-agent.toml" || return 1
    wait_for 60 fence_held || return 1
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" -v w="$1" 'BEGIN{printf "restart to fence held, %s: %.2fs\n", w, b-a}' | tee -a "$OUT/restart-times.txt"
}

t_sigkill_running() {
    # For comparison: a restart with no snapshot job to recover.
    restart_after_kill "no job" || return 1
    spawn w-kill "$VOLFENCECTL" snapshot start r-kill "$SVG" ext || return 1
    wait_for 120 job_running r-kill || return 1
    lvs "$SVG" | grep vfsnap-r-kill
    # capture the real report while a thick and a thin snapshot exist
    lvcreate -q -y -s -n capthin "$SVG/thin" -kn -ay >/dev/null && \
    lvs --reportformat json --units b --nosuffix -a -o vg_name,lv_name,lv_attr,lv_size,origin,pool_lv,data_percent,lv_path "$SVG" > "$OUT/lvm-capture/lvs-snapshots.json"
    lvremove -q -y "$SVG/capthin" >/dev/null
    cp /proc/self/mountinfo "$OUT/lvm-capture/mountinfo.txt"
    restart_after_kill "a running job interrupted" || return 1
    expect_rc 0 "$VOLFENCECTL" snapshot status r-kill --json || return 1
    contains "$RUN_OUT" '"Phase": "failed"' && contains "$RUN_OUT" "agent restarted" || return 1
    no_leftovers || return 1
    touch "$EXO/go-r-kill"; nap 2
    pgrep -f "snapshot-executor.sh $EXO" && { echo "an executor survived"; return 1; }
    [ "$(runs_of r-kill)" = 1 ] || fail "executor ran $(runs_of r-kill) times" || return 1
    stop_spawned w-kill 5 || true
}
check snapshot-sigkill-while-running t_sigkill_running

t_cow_guard() {
    spawn w-cow "$VOLFENCECTL" snapshot start r-cow "$SVG" ext --size 8M --wait || return 1
    wait_for 120 job_running r-cow || return 1
    # fill the COW area a megabyte at a time, so the guard (1 s period) sees it pass 80%
    local i
    for i in $(seq 0 15); do
        spawned_exited w-cow && break
        dd if=/dev/urandom of="$W/o-ext/fill.bin" bs=1M count=1 seek="$i" conv=notrunc,fsync status=none
        nap 0.7
    done
    wait_for 60 spawned_exited w-cow || return 1
    cat "$OUT/w-cow.log"
    [ "$(spawned_rc w-cow)" = 1 ] || return 1
    grep -q "snapshot space exhausted" "$OUT/w-cow.log" || return 1
    rm -f "$W/o-ext/fill.bin"
    no_leftovers
}
check snapshot-cow-guard-abort t_cow_guard

t_keep_release() {
    touch "$EXO/go-r-keep"
    expect_rc 0 "$VOLFENCECTL" snapshot start r-keep "$SVG" xfs --keep --wait || return 1
    grep -q " /run/volfence/snapshots/vfsnap-r-keep " /proc/self/mountinfo || fail "kept snapshot not mounted" || return 1
    # the agent removes only LVs carrying its tag: real LVM must report it as the fake does
    lvs --noheadings -o lv_tags "$SVG/vfsnap-r-keep" | grep -qw volfence_snapshot ||
        fail "snapshot LV without the volfence_snapshot tag: $(lvs --noheadings -o lv_name,lv_tags "$SVG")" || return 1
    expect_rc 0 as_nobody "$VOLFENCECTL" snapshot list || return 1
    contains "$RUN_OUT" r-keep || return 1
    expect_rc 0 as_nobody "$VOLFENCECTL" snapshot status r-keep || return 1
    expect_rc 4 as_nobody "$VOLFENCECTL" snapshot release r-keep || return 1
    expect_rc 0 "$VOLFENCECTL" snapshot release r-keep || return 1
    no_leftovers || return 1
    expect_rc 0 "$VOLFENCECTL" snapshot list || return 1
    curl -s http://127.0.0.1:9480/metrics 2>/dev/null | grep -E '^volfence_snapshot' ||
        /usr/bin/python3 -c 'import urllib.request;print(urllib.request.urlopen("http://127.0.0.1:9480/metrics").read().decode())' | grep -E '^volfence_snapshot'
}
check snapshot-keep-release t_keep_release

SEMU=http://127.0.0.1:16444
# emu_call METHOD PATH [JSON] : a request to the guest's API emulator; the body lands in RUN_OUT
emu_call() {
    RUN_OUT=$(/usr/bin/python3 -c '
import sys, urllib.request
method, url, data = sys.argv[1], sys.argv[2], (sys.argv[3].encode() if len(sys.argv) > 3 else None)
req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=10).read().decode())' "$1" "$SEMU$2" ${3:+"$3"}) || return 1
    printf '%s\n' "$RUN_OUT"
}
claim_events() { emu_call GET "/api/v1/namespaces/vms/events?fieldSelector=involvedObject.name%3Ddisk-xfs" >/dev/null && contains "$RUN_OUT" SnapshotFailed; }

t_claim_event() {
    stop_spawned sagent 15 || return 1
    spawn snapemu "$VOLFENCE_EMULATOR" --listen 127.0.0.1:16444 --kubeconfig "$W/snap-kubeconfig" --client snapnode || return 1
    wait_for 30 grep -q "listening on" "$OUT/snapemu.log" || return 1
    local ns
    for ns in vms volfence-system; do
        expect_rc 0 kubectl --kubeconfig "$W/snap-kubeconfig" create namespace "$ns" || return 1
    done
    emu_call POST /api/v1/namespaces/vms/persistentvolumeclaims \
        '{"metadata": {"name": "disk-xfs"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "320Mi"}}}}' || return 1
    local uid; uid=$(/usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["uid"])' <<< "$RUN_OUT")
    { cat "$W/snap-agent.toml"; printf '[fence]\nbackend = "kubernetes"\nlease_namespace = "volfence-system"\n[kubernetes]\nkubeconfig = "%s"\n' "$W/snap-kubeconfig"; } > "$W/snap-agent-kube.toml"
    spawn sagent env RUST_LOG=info "$VOLFENCED" --config "$W/snap-agent-kube.toml" || return 1
    wait_for 90 fence_held || { tail -20 "$OUT/sagent.log"; return 1; }
    touch "$EXO/go-fail-claim"
    expect_rc 1 "$VOLFENCECTL" snapshot start fail-claim "$SVG" xfs --claim vms/disk-xfs --wait || return 1
    expect_rc 1 "$VOLFENCECTL" snapshot start fail-bad "$SVG" xfs --claim Vms/disk-xfs || return 1
    contains "$RUN_OUT" 'claim "Vms/disk-xfs": namespace "Vms" is not a DNS-1123 label' || return 1
    no_leftovers || return 1
    wait_for 60 claim_events || return 1
    UID_WANT=$uid json_assert 'len(s["items"]) == 1' \
        's["items"][0]["reason"] == "SnapshotFailed" and s["items"][0]["type"] == "Warning"' \
        's["items"][0]["involvedObject"]["uid"] == e["UID_WANT"]' \
        '"fail-claim" in s["items"][0]["message"] and "vgsnap/xfs" in s["items"][0]["message"]' \
        's["items"][0]["reportingComponent"] == "volfence.io/volfenced"' || return 1
    # Where an operator looks for it.
    expect_rc 0 kubectl --kubeconfig "$W/snap-kubeconfig" describe pvc -n vms disk-xfs || return 1
    contains "$RUN_OUT" SnapshotFailed && contains "$RUN_OUT" fail-claim
}
check snapshot-failure-event-on-claim t_claim_event

t_snapshot_teardown() {
    stop_spawned sagent 15
    stop_spawned snapemu 10 || true
    local lv
    for lv in ext xfs thin; do umount "$W/o-$lv"; done
    vgremove -q -y -f "$SVG"
}
check snapshot-teardown t_snapshot_teardown
