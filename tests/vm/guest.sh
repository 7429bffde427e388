#!/bin/bash
# tests/vm/guest.sh - guest side of the VM tier, run as root by virtme-ng-init (vng --exec).
#
# The guest sees the host root read-only over 9p, with tmpfs overlays on /etc /usr /var /tmp
# (writable, changes stay in the VM); other directories are read-only, so scratch space is
# $W under /run (tmpfs).
#
# Usage (inside the guest): guest.sh OUTDIR
#   OUTDIR : shared read-write with the host (vng --rwdir); logs go there
# Environment (set by run.sh): VOLFENCED VOLFENCECTL VOLFENCE_DEB VOLFENCE_NVME_TESTS VOLFENCE_CONNECT_BENCH
#   VOLFENCE_RESV_TESTS (artifacts under test), NVME_BENCH_ROUNDS, VM_CASES, VM_SKIP, FAILOVER_TRIALS, RESV_TRIALS,
#   VOLFENCE_SRC (repository root: policy and unit sources), STEP_TIMEOUT, TRACE.
#
# Sources every cases/*.sh in name order; each defines test functions and registers them with
# `check NAME FUNC`, which runs them right away. Prints "PASS/FAIL name (time)" per check, then
# "N passed, N failed"; exits 0 iff all passed.
set -u
export LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-/run/vmtest-out}
W=/run/vmtest
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
: "${VOLFENCED:?} ${VOLFENCECTL:?} ${VOLFENCE_DEB:?} ${VOLFENCE_SRC:?} ${VOLFENCE_EMULATOR:?} ${VOLFENCE_NVME_TESTS:?} ${VOLFENCE_CONNECT_BENCH:?} ${VOLFENCE_RESV_TESTS:?}"
export LVM_SUPPRESS_FD_WARNINGS=1   # virtme's virtio-serial fds are inherited by lvm commands
mkdir -p "$OUT" "$W"

# shellcheck source=lib.sh
. "$HERE/lib.sh"
: > "$LOG"
T_START=$(now_us)

echo "guest: kernel $(uname -r), uptime $(uptime_s)s, cpus $(nproc), mem $(awk '/MemTotal/{print $2}' /proc/meminfo)kB"

for case_file in "$HERE"/cases/*.sh; do
    # VM_CASES="10-base 20-agent 40-nvme": run only those (a case may need the ones before it)
    if [ -n "${VM_CASES:-}" ]; then
        case " $VM_CASES " in *" $(basename "$case_file" .sh) "*) ;; *) continue ;; esac
    fi
    # VM_SKIP="60-claims": not these (they run in a boot of their own)
    case " ${VM_SKIP:-} " in *" $(basename "$case_file" .sh) "*) continue ;; esac
    echo "--- $(basename "$case_file")"
    echo "##### $case_file" >> "$LOG"
    # Sourcing stops silently at a syntax error and the checks after it would just be missing.
    if ! bash -n "$case_file" 2>> "$LOG"; then
        FAIL=$((FAIL + 1)); echo "FAIL $(basename "$case_file" .sh): does not parse (see $LOG)"
        continue
    fi
    # shellcheck source=/dev/null
    . "$case_file"
done

dmesg > "$OUT/dmesg.log" 2>&1
echo "guest: checks took $(secs_since "$T_START")s, guest uptime $(uptime_s)s"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ] && [ "$PASS" -gt 0 ]
