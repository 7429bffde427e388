#!/bin/bash
# tests/vm/run.sh - real-kernel VM test tier (host side).
#
# Boots a stock Debian kernel with virtme-ng under qemu (TCG, --disable-kvm) and runs
# tests/vm/guest.sh inside it. The guest runs THIS machine's userspace: its root is the host
# root shared read-only over 9p, with writable tmpfs overlays on /etc /usr /var /tmp (writes
# stay in the VM) and scratch space in /run. So every tool the guest uses must be installed
# on the host (scripts/install-deps.sh does that; this script installs nothing).
#
# Steps:
#   1. check the tools (vng, qemu, ... and what the guest will run);
#   2. fetch the kernel package with `apt-get download`, unpack it with dpkg-deb into
#      $VMTEST_WORK/kernel/<kver> and run depmod there (nothing goes to /boot or /lib/modules);
#   3. check the artifacts under test exist (release binaries and the .deb);
#   4. boot: vng --disable-kvm ... --exec tests/vm/guest.sh, with a sparse virtio-blk disk
#      (serial "lvmdisk") for LVM cases and an i6300esb watchdog for fence cases;
#   5. exit 0 only if vng exited 0 AND the guest printed "N passed, 0 failed" with N > 0;
#   6. the auth boot: Debian 12's 6.12 kernel (NVMe in-band authentication, which its 6.1
#      lacks) runs cases 10-base, 20-agent and 45-nvme-auth; its counts add to the main boot's;
#   7. the two-host boot: the baseline kernel with nvme_core.multipath=N (each initiator its own
#      block device) runs cases 10-base, 20-agent and 60-claims (two agents, one volume); its
#      counts add too, and its failover figures are printed;
#   8. the reservations boot: a kernel whose nvmet has NVMe reservations (Linux >= 6.13: the
#      newest linux-binary-*+deb13-amd64 of Debian trixie-backports, fetched through a private
#      apt configuration under $VMTEST_WORK, never the machine's sources) with
#      nvme_core.multipath=N runs cases 10-base, 70-reservations and 75-resv-takeover (two
#      agents, one agent hung with SIGSTOP while its VM writes: the takeover's preempt-and-abort
#      stops those writes at the target); its figures are printed;
#   9. the watchdog-reset boot (judged from the outside).
# The last line printed is always "N passed, N failed" (CI parses it).
#
# Environment knobs:
#   VOLFENCED, VOLFENCECTL  binaries under test (default target/release/{volfenced,volfencectl})
#   VOLFENCE_EMULATOR       the API emulator run in the guest (default target/release/volfence-kube-emulator)
#   VOLFENCE_NVME_TESTS     the NVMe test bodies (default: built by `cargo test --test nvme --no-run`)
#   VOLFENCE_CONNECT_BENCH  the connect benchmark (default: built by `cargo bench --bench nvme_connect --no-run`)
#   NVME_BENCH_ROUNDS       rounds of the connect benchmark (default in cases/40-nvme.sh)
#   VM_MAIN=0               skip the main boot; VM_RESET_TEST=0 skip the watchdog-reset boot;
#                           VM_AUTH_TEST=0 skip the auth boot; VM_CLAIMS_TEST=0 skip the two-host boot
#   FAILOVER_TRIALS (5)     failover trials in the two-host boot (after its first takeover)
#   RESV_TRIALS (3)         hung-holder takeovers in the reservations boot, the roles alternating
#   VM_RESV_TEST=0          skip the reservations boot; RESV_KERNEL_PKG pins its linux-binary-* package
#   VOLFENCE_RESV_TESTS     the reservation test body (default: built by `cargo test --test nvme_resv --no-run`)
#   AUTH_KERNEL_PKG         the auth boot's kernel (default: what linux-image-6.12-amd64 depends on)
#   VM_CASES="10-base 20-agent 40-nvme"  run only these cases in the main boot
#   VOLFENCE_DEB            package under test (default target/debian/volfence_0.1.0-1_amd64.deb)
#   VOLFENCE_SRC            tree holding dbus/org.volfence.Agent1.conf and systemd/volfenced.service
#                           (default: this repository)
#   KERNEL_PKG              kernel package (default: what linux-image-amd64 depends on now)
#   VMTEST_WORK             kernel + disk image cache (default tests/vm/work, gitignored)
#   VMTEST_OUT              logs (default tests/vm/out, gitignored): console.log, guest-detail.log ...
#   VM_TIMEOUT (1500)       seconds for the whole VM run (boot + checks; ~850 s under TCG on CI)
#   VM_CPUS (2) VM_MEM (1G) guest size
#   STEP_TIMEOUT (150)      per-check watchdog in the guest, seconds
#   VMTEST_ACCEL=kvm        try KVM instead of TCG (does not work on PVM/Firecracker hosts)
#   TRACE=1                 `set -x` with uptime stamps in guest-detail.log (slow under TCG)
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${VMTEST_WORK:-$HERE/work}
OUT=${VMTEST_OUT:-$HERE/out}
VM_TIMEOUT=${VM_TIMEOUT:-1500}
VM_CPUS=${VM_CPUS:-2}
VM_MEM=${VM_MEM:-1G}
VOLFENCED=${VOLFENCED:-$REPO/target/release/volfenced}
VOLFENCECTL=${VOLFENCECTL:-$REPO/target/release/volfencectl}
VOLFENCE_EMULATOR=${VOLFENCE_EMULATOR:-$REPO/target/release/volfence-kube-emulator}
# The NVMe test bodies (tests/nvme.rs), run in the guest against the real kernel.
# The connect benchmark's client (benches/nvme_connect.rs), built like `cargo bench` builds it.
# Prints the executable cargo built for target $1 from its JSON messages (the rest of the arguments).
cargo_executable() {
    local name=$1; shift
    (cd "$REPO" && cargo "$@" --message-format=json 2>/dev/null) | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$name" | tail -1
}
[ -n "${VOLFENCE_NVME_TESTS:-}" ] || VOLFENCE_NVME_TESTS=$(cargo_executable nvme test --test nvme --no-run)
[ -n "${VOLFENCE_CONNECT_BENCH:-}" ] || VOLFENCE_CONNECT_BENCH=$(cargo_executable nvme_connect bench --bench nvme_connect --no-run)
[ -n "${VOLFENCE_RESV_TESTS:-}" ] || VOLFENCE_RESV_TESTS=$(cargo_executable nvme_resv test --test nvme_resv --no-run)
VOLFENCE_DEB=${VOLFENCE_DEB:-$REPO/target/debian/volfence_0.1.0-1_amd64.deb}

T_ALL=$EPOCHREALTIME
PHASE_T=$T_ALL
SUMMARY_PRINTED=0

# secs_since T : seconds (one decimal) elapsed since the $EPOCHREALTIME value T
secs_since() {
    local d=$(( ${EPOCHREALTIME/./} - ${1/./} ))
    printf '%d.%d' $((d / 1000000)) $((d % 1000000 / 100000))
}
phase() {   # phase NAME : time since the previous phase mark
    printf '[host] phase %-18s %6ss\n' "$1" "$(secs_since "$PHASE_T")"
    PHASE_T=$EPOCHREALTIME
}
# CI parses the last line: even when we die before or during the VM run, end with a summary
# line that counts the failure.
final_summary() {
    [ "$SUMMARY_PRINTED" = 1 ] && return
    SUMMARY_PRINTED=1
    printf '[host] total %ss\n' "$(secs_since "$T_ALL")"
    echo "${1:-0 passed, 1 failed}"
}
die() {
    echo "[host] ERROR: $*"   # stdout: keep it before the summary line in the log CI reads
    final_summary "0 passed, 1 failed"
    exit 1
}

mkdir -p "$WORK" "$OUT" || die "cannot create $WORK or $OUT"
rm -f "$OUT"/*.log "$OUT"/*.txt

# ------------------------------------------------------------------ 1. tools
check_tools() {
    local t missing=()
    # host side
    for t in vng qemu-system-x86_64 apt-get apt-cache dpkg-deb depmod timeout truncate; do
        command -v "$t" > /dev/null || missing+=("$t")
    done
    # what guest.sh and the cases run (the guest uses the host's /usr)
    for t in busybox udevadm modprobe dbus-daemon dbus-send busctl setpriv dpkg dpkg-query \
             systemd-analyze lvm nvme mkfs.ext4 mkfs.xfs; do
        command -v "$t" > /dev/null || missing+=("$t")
    done
    [ -x /usr/bin/python3 ] || missing+=(/usr/bin/python3)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "[host] missing tools: ${missing[*]}"
        die "install the test dependencies with scripts/install-deps.sh"
    fi
}
check_tools
phase tools

# ------------------------------------------------------------------ 2. kernel
# A metapackage (linux-image-amd64: Debian 12's 6.1; linux-image-6.12-amd64: its 6.12, which
# the auth boot needs) depends on the current linux-image-<abi>-amd64; old ABIs vanish from the
# mirror after security updates, so it is resolved on every run.
kpkg() { apt-cache depends "$1" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
kpaths() { KVER=${KPKG#linux-image-}; KROOT=$WORK/kernel/$KVER; KIMG=$KROOT/boot/vmlinuz-$KVER; }
kcached() { [ -s "$KIMG" ] && [ -s "$KROOT/lib/modules/$KVER/modules.dep" ]; }
APT_UPDATED=0
apt_update_once() {
    [ $APT_UPDATED = 1 ] && return 0
    apt-get update -qq > "$OUT/apt-update.log" 2>&1 || { cat "$OUT/apt-update.log" >&2; die "apt-get update failed"; }
    APT_UPDATED=1
}
# fetch_kernel METAPACKAGE [PACKAGE] : unpack PACKAGE (default: what METAPACKAGE depends on)
# under $WORK/kernel, once; sets KPKG KVER KROOT KIMG.
fetch_kernel() {
    local meta=$1 pinned=${2:-}
    KPKG=${pinned:-$(kpkg "$meta")}
    [ -n "$KPKG" ] && kpaths
    if [ -z "$KPKG" ] || ! kcached; then
        # not cached, or no/old package lists: refresh the lists, resolve again
        apt_update_once
        KPKG=${pinned:-$(kpkg "$meta")}
        [ -n "$KPKG" ] || die "cannot resolve the $meta dependency (set KERNEL_PKG / AUTH_KERNEL_PKG)"
        kpaths
    fi
    kcached && return 0
    echo "[host] fetching $KPKG"
    rm -rf "$KROOT" "$WORK/kernel/deb"
    mkdir -p "$WORK/kernel/deb"
    ( cd "$WORK/kernel/deb" && apt-get download "$KPKG" ) > "$OUT/kernel-download.log" 2>&1 \
        || { cat "$OUT/kernel-download.log" >&2; die "apt-get download $KPKG failed"; }
    dpkg-deb -x "$WORK"/kernel/deb/"$KPKG"_*.deb "$KROOT" || die "dpkg-deb -x failed"
    rm -rf "$WORK/kernel/deb"
    depmod -b "$KROOT" "$KVER" || die "depmod failed"   # the .deb ships no modules.dep
    kcached || die "kernel tree $KROOT is incomplete (no $KIMG or modules.dep)"
}
fetch_kernel linux-image-amd64 "${KERNEL_PKG:-}"
echo "[host] kernel $KVER: $KIMG"
# The auth boot's kernel: without it that boot counts one failure; the others still run.
AUTH_KIMG=
if [ "${VM_AUTH_TEST:-1}" = 1 ]; then
    if ( fetch_kernel linux-image-6.12-amd64 "${AUTH_KERNEL_PKG:-}" && echo "$KIMG" > "$WORK/auth-kernel" ) \
        > "$OUT/auth-kernel.log" 2>&1; then
        AUTH_KIMG=$(cat "$WORK/auth-kernel")
        echo "[host] auth boot kernel: $AUTH_KIMG"
    else
        echo "[host] FAIL auth boot: no kernel: $(grep -v '^[0-9]* passed' "$OUT/auth-kernel.log" | tail -2 | tr '\n' ' ')"
    fi
fi
# The reservations boot's kernel, from trixie-backports through apt options that name a sources
# list and lists directory of our own: the machine's sources and lists stay as they are.
RESV_KIMG=
fetch_resv_kernel() {
    local apt=$WORK/apt-trixie-backports pkg ver root
    local A=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache")
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" || return 1
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main" \
        > "$apt/sources.list"
    pkg=${RESV_KERNEL_PKG:-}
    if [ -z "$pkg" ]; then
        apt-get "${A[@]}" update -qq || return 1
        pkg=$(apt-cache "${A[@]}" pkgnames linux-binary- | grep -E '^linux-binary-[0-9.]+\+deb13-amd64$' | sort -V | tail -1)
        [ -n "$pkg" ] || { echo "no linux-binary-*+deb13-amd64 in trixie-backports"; return 1; }
    fi
    ver=${pkg#linux-binary-}
    root=$WORK/kernel/$ver
    RESV_KIMG=$root/boot/vmlinuz-$ver
    [ -s "$RESV_KIMG" ] && [ -s "$root/lib/modules/$ver/modules.dep" ] && return 0
    [ -n "${RESV_KERNEL_PKG:-}" ] && { apt-get "${A[@]}" update -qq || return 1; }
    rm -rf "$apt/deb" "$root"; mkdir -p "$apt/deb" "$root/boot"
    (cd "$apt/deb" && apt-get "${A[@]}" download "$pkg" "linux-modules-$ver") || return 1
    for d in "$apt"/deb/*.deb; do dpkg-deb -x "$d" "$root" || return 1; done
    rm -rf "$apt/deb"
    # The image sits beside its modules in these packages; virtme-ng finds modules under lib/.
    cp "$root/usr/lib/modules/$ver/vmlinuz" "$RESV_KIMG" && ln -sfn usr/lib "$root/lib" \
        && depmod -b "$root" "$ver" 2>/dev/null
}
if [ "${VM_RESV_TEST:-1}" = 1 ]; then
    if fetch_resv_kernel > "$OUT/resv-kernel.log" 2>&1 && [ -s "$RESV_KIMG" ]; then
        echo "[host] reservations boot kernel: $RESV_KIMG"
    else
        RESV_KIMG=
        echo "[host] FAIL reservations boot: no kernel: $(tail -2 "$OUT/resv-kernel.log" | tr '\n' ' ')"
    fi
fi
phase kernel

# ------------------------------------------------------------------ 3. artifacts under test
check_artifacts() {
    local f
    for f in "$VOLFENCED" "$VOLFENCECTL" "$VOLFENCE_EMULATOR" "$VOLFENCE_NVME_TESTS" "$VOLFENCE_CONNECT_BENCH" "$VOLFENCE_RESV_TESTS"; do
        [ -x "$f" ] || die "$f is missing or not executable (cargo build --release --workspace --bins, or set VOLFENCED/VOLFENCECTL)"
    done
    [ -s "$VOLFENCE_DEB" ] || die "$VOLFENCE_DEB is missing (cargo deb, or set VOLFENCE_DEB)"
    # absolute paths: the guest sees the host tree at the same places
    VOLFENCED=$(readlink -f "$VOLFENCED"); VOLFENCECTL=$(readlink -f "$VOLFENCECTL")
    VOLFENCE_EMULATOR=$(readlink -f "$VOLFENCE_EMULATOR")
    VOLFENCE_NVME_TESTS=$(readlink -f "$VOLFENCE_NVME_TESTS")
    VOLFENCE_CONNECT_BENCH=$(readlink -f "$VOLFENCE_CONNECT_BENCH")
    VOLFENCE_RESV_TESTS=$(readlink -f "$VOLFENCE_RESV_TESTS")
    VOLFENCE_DEB=$(readlink -f "$VOLFENCE_DEB")
    echo "[host] under test: $VOLFENCED ($("$VOLFENCED" --version 2>&1)), $VOLFENCECTL, $VOLFENCE_DEB"
}
check_artifacts
phase artifacts

# ------------------------------------------------------------------ 4. boot + guest checks
DISK=$WORK/lvmdisk.img
rm -f "$DISK"
truncate -s 2G "$DISK" || die "cannot create $DISK"
ACCEL_ARGS=(--disable-kvm)   # KVM here is kvm_pvm: qemu aborts or the kernel hangs (see NOTES in git history)
[ "${VMTEST_ACCEL:-tcg}" = kvm ] && ACCEL_ARGS=()
QEMU_OPTS="-drive if=none,id=lvmdisk,file=$DISK,format=raw,cache=unsafe -device virtio-blk-pci,drive=lvmdisk,serial=lvmdisk"
QEMU_OPTS+=" -device i6300esb"
# guest_cmd OUTDIR CASES [NAME VALUE]... : guest.sh's command line (--exec goes through a shell
# in the guest: every value quoted)
guest_cmd() {
    local out=$1 cases=$2; shift 2
    printf '%q=%q ' VOLFENCED "$VOLFENCED" VOLFENCECTL "$VOLFENCECTL" VOLFENCE_DEB "$VOLFENCE_DEB" \
        VOLFENCE_EMULATOR "$VOLFENCE_EMULATOR" VOLFENCE_NVME_TESTS "$VOLFENCE_NVME_TESTS" \
        VOLFENCE_CONNECT_BENCH "$VOLFENCE_CONNECT_BENCH" NVME_BENCH_ROUNDS "${NVME_BENCH_ROUNDS:-}" \
        VOLFENCE_RESV_TESTS "$VOLFENCE_RESV_TESTS" \
        VOLFENCE_SRC "${VOLFENCE_SRC:-$REPO}" STEP_TIMEOUT "${STEP_TIMEOUT:-150}" TRACE "${TRACE:-}" \
        VM_CASES "$cases" "$@"
    printf '%q %q' "$HERE/guest.sh" "$out"
}
# 60-claims, 70-reservations and 75-resv-takeover need nvme_core.multipath=N (and 70 and 75 a
# newer kernel): their boots run them.
GUEST_CMD=$(guest_cmd "$OUT" "${VM_CASES:-}" VM_SKIP "60-claims 70-reservations 75-resv-takeover")
VNG=(vng -r "$KIMG" "${ACCEL_ARGS[@]}" --cpus "$VM_CPUS" --memory "$VM_MEM"
     --rwdir="$OUT" --qemu-opts="$QEMU_OPTS" --exec "$GUEST_CMD")
echo "[host] ${VNG[*]}"
# GNU timeout makes itself a process-group leader and signals the whole group, so qemu
# (a child of vng) goes down too if the guest hangs.
if [ "${VM_MAIN:-1}" = 1 ]; then
    timeout -k 20 "$VM_TIMEOUT" "${VNG[@]}" < /dev/null 2>&1 | tee "$OUT/console.log"
    rc=${PIPESTATUS[0]}
else
    echo "0 passed, 0 failed" > "$OUT/console.log"; rc=0   # VM_MAIN=0: only the reset boot
fi
phase "vm (boot+checks)"
rm -f "$DISK"

# ------------------------------------------------------------------ 5. verdict
summary=$(tr -d '\r' < "$OUT/console.log" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
echo "[host] vng exit code $rc; guest summary: ${summary:-<none>}"
if [ -z "$summary" ]; then
    # the guest died or hung before its summary: count what it reported, plus one failure
    npass=$(tr -d '\r' < "$OUT/console.log" | grep -c '^PASS ')
    nfail=$(tr -d '\r' < "$OUT/console.log" | grep -c '^FAIL ')
    summary="$npass passed, $((nfail + 1)) failed"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "[host] FAIL: VM timed out after ${VM_TIMEOUT}s (see $OUT/guest-detail.log)"
    else
        echo "[host] FAIL: the guest printed no summary (see $OUT/console.log)"
    fi
elif [ "${VM_MAIN:-1}" = 1 ] && { [ "$rc" -ne 0 ] || ! [[ $summary =~ ^[1-9][0-9]*\ passed,\ 0\ failed$ ]]; }; then
    echo "[host] FAIL (details: $OUT/guest-detail.log, $OUT/dmesg.log)"
fi

# boot_summary CONSOLE_LOG VNG_RC : the boot's "N passed, N failed"; one failure more if it died
# or hung before printing it, or if vng failed although no check did
boot_summary() {
    local log=$1 rc=$2 s np nf
    s=$(tr -d '\r' < "$log" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
    if [ -z "$s" ]; then
        np=$(tr -d '\r' < "$log" | grep -c '^PASS '); nf=$(tr -d '\r' < "$log" | grep -c '^FAIL ')
        s="$np passed, $((nf + 1)) failed"
    elif [ "$rc" -ne 0 ] && [[ $s =~ \ 0\ failed$ ]]; then
        s="${s%% *} passed, 1 failed"
    fi
    echo "$s"
}

# ------------------------------------------------------------------ 6.-8. the other boots
# extra_boot LABEL DIR KIMG APPEND CASES [NAME VALUE]... : one more boot of kernel KIMG (with
# kernel arguments APPEND) running CASES; its logs under $OUT/DIR, its summary added to $summary.
# Its checks and a failed check's last lines are printed here: CI shows this output.
extra_boot() {
    local label=$1 out=$OUT/$2 kimg=$3 append=$4 cases=$5 rc s np nf bp bf; shift 5
    local args=(); [ -n "$append" ] && args=(--append "$append")
    mkdir -p "$out"; rm -f "$out"/*.log "$out"/*.txt
    if [ -z "$kimg" ]; then
        s="0 passed, 1 failed"   # its kernel could not be fetched (said above)
    else
        truncate -s 2G "$DISK" || return 1
        timeout -k 20 "$VM_TIMEOUT" vng -r "$kimg" "${ACCEL_ARGS[@]}" --cpus "$VM_CPUS" --memory "$VM_MEM" \
            "${args[@]}" --rwdir="$out" --qemu-opts="$QEMU_OPTS" \
            --exec "$(guest_cmd "$out" "$cases" "$@")" < /dev/null > "$out/console.log" 2>&1
        rc=$?
        rm -f "$DISK"
        phase "vm ($label)"
        tr -d '\r' < "$out/console.log" | grep -E '^(PASS |FAIL |guest: |--- last lines |    )' | sed "s/^/[host] $label: /"
        grep -hE '^(failover|resv-[a-z]+): ' "$out/guest-detail.log" 2>/dev/null | sed "s/^/[host] $label: /"
        s=$(boot_summary "$out/console.log" "$rc")
        echo "[host] $label ($kimg${append:+, $append}): vng exit code $rc; $s (details: $out/guest-detail.log)"
    fi
    read -r np nf < <(awk '{print $1, $3}' <<< "$summary")
    read -r bp bf < <(awk '{print $1, $3}' <<< "$s")
    summary="$((np + bp)) passed, $((nf + bf)) failed"
}
# NVMe in-band authentication (DH-HMAC-CHAP) needs NVME_HOST_AUTH and NVME_TARGET_AUTH, which
# Debian's 6.1 lacks: cases/45-nvme-auth.sh runs under its 6.12, after the cases it needs.
[ "${VM_AUTH_TEST:-1}" = 1 ] && extra_boot "auth boot" auth "$AUTH_KIMG" "" "10-base 20-agent 45-nvme-auth" VM_REQUIRE_AUTH 1
# Two agents on one real nvmet namespace: with native multipath both initiators' paths would
# join one head device; nvme_core.multipath=N gives each its own, as two hosts have.
[ "${VM_CLAIMS_TEST:-1}" = 1 ] && extra_boot "two-host boot" claims "$KIMG" nvme_core.multipath=N \
    "10-base 20-agent 60-claims" FAILOVER_TRIALS "${FAILOVER_TRIALS:-5}"
# NVMe reservations need nvmet from Linux 6.13 on.
[ "${VM_RESV_TEST:-1}" = 1 ] && extra_boot "reservations boot" resv "$RESV_KIMG" nvme_core.multipath=N \
    "10-base 70-reservations 75-resv-takeover" RESV_TRIALS "${RESV_TRIALS:-3}"

# ------------------------------------------------------------------ 9. last boot: watchdog reset
# A hung agent (SIGSTOP) stops feeding the hardware watchdog: the guest must reset. virtme runs
# qemu with -no-reboot, so the reset ends the VM; judged here from the outside.
reset_check() {
    local out=$OUT/reset cmd t_stop t_end rc
    mkdir -p "$out"; rm -f "$out"/*
    cmd=$(printf '%q=%q ' VOLFENCED "$VOLFENCED" VOLFENCE_SRC "${VOLFENCE_SRC:-$REPO}")
    cmd+=$(printf '%q %q' "$HERE/guest-reset.sh" "$out")
    timeout -k 20 400 vng -r "$KIMG" "${ACCEL_ARGS[@]}" --cpus "$VM_CPUS" --memory "$VM_MEM" \
        --rwdir="$out" --qemu-opts="-device i6300esb" --exec "$cmd" < /dev/null > "$out/console.log" 2>&1
    rc=$?
    t_end=$(date +%s)
    phase "vm (watchdog reset)"
    cat "$out/reset-marker" 2>/dev/null | sed 's/^/[host] guest: /'
    if ! grep -q "SIGSTOP at" "$out/reset-marker" 2>/dev/null; then
        echo "[host] FAIL watchdog-reset: the guest never stopped the agent (see $out/)"; return 1
    fi
    if grep -q SURVIVED "$out/reset-marker" || [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "[host] FAIL watchdog-reset: the guest survived a hung agent (vng exit $rc)"; return 1
    fi
    t_stop=$(stat -c %Y "$out/reset-marker")
    echo "[host] PASS watchdog-reset: the guest reset $((t_end - t_stop))s after the agent was stopped (vng exit $rc)"
}
if [ "${VM_RESET_TEST:-1}" = 1 ]; then
    read -r np nf < <(awk '{print $1, $3}' <<< "$summary")
    if reset_check; then np=$((np + 1)); else nf=$((nf + 1)); fi
    summary="$np passed, $nf failed"
fi
if [ "$rc" -eq 0 ] && [[ $summary =~ ^[1-9][0-9]*\ passed,\ 0\ failed$ ]]; then
    echo "[host] OK (logs in $OUT)"
    final_summary "$summary"
    exit 0
fi
final_summary "$summary"
exit 1
