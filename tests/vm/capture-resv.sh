#!/bin/bash
# tests/vm/capture-resv.sh - how tests/fixtures/nvme-resv-7.3/ was made: boots a kernel whose
# nvmet supports reservations (Linux >= 6.13; Debian trixie-backports' 7.3 here, fetched as
# ../shared/reference/vm/reservations/NOTES.md says, with a private apt sources list) and runs
# guest-resv-capture.sh, which saves raw reservation Reports from the real target.
#
# Usage: tests/vm/capture-resv.sh VMLINUZ OUTDIR   (the modules beside it, as run.sh unpacks them)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KIMG=${1:?VMLINUZ} OUT=${2:?OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
timeout -k 20 600 vng -r "$KIMG" --disable-kvm --cpus 2 --memory 1G --append nvme_core.multipath=N \
    --rwdir="$OUT" --exec "$HERE/guest-resv-capture.sh $OUT" < /dev/null > "$OUT/console.log" 2>&1
grep -q '^done' "$OUT/capture.log" && ls -l "$OUT"/*.bin
