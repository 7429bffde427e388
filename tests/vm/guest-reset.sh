#!/bin/bash
# tests/vm/guest-reset.sh - guest side of the VM tier's second boot: the agent with qemu's
# i6300esb hardware watchdog, then SIGSTOP, as a hung agent would be. Nothing feeds the watchdog
# any more, so the guest must reset within its timeout (5 s at the default timing). virtme runs
# qemu with -no-reboot, so the reset ends the VM; run.sh judges from the outside:
# "SIGSTOP" in the marker file, no "SURVIVED", and the VM gone soon after.
#
# Usage (inside the guest): guest-reset.sh OUTDIR   (env: VOLFENCED, VOLFENCE_SRC)
set -u
export LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?}
W=/run/vmtest
: "${VOLFENCED:?} ${VOLFENCE_SRC:?}"
mkdir -p "$OUT" "$W"
# shellcheck source=lib.sh
. "$HERE/lib.sh"
: > "$LOG"
MARK=$OUT/reset-marker

install -m 0644 "$VOLFENCE_SRC/dbus/org.volfence.Agent1.conf" /etc/dbus-1/system.d/
start_system_bus >> "$LOG" 2>&1 || { echo "RESET-TEST: no system bus" | tee "$MARK"; exit 1; }
printf '[fence]\nwatchdog_device = "/dev/watchdog"\n[metrics]\nenabled = false\n' > "$W/wd.toml"
rm -rf /var/lib/volfence /run/volfence
spawn wagent env RUST_LOG=info "$VOLFENCED" --config "$W/wd.toml" >> "$LOG" 2>&1 || exit 1
wait_for 90 grep -qF "armed with a 5s timeout" "$OUT/wagent.log" >> "$LOG" 2>&1 \
    || { echo "RESET-TEST: the watchdog was never armed" | tee "$MARK"; exit 1; }
nap 3   # renews keep feeding it meanwhile
echo "RESET-TEST: SIGSTOP at uptime $(uptime_s)" | tee "$MARK"
sync
kill -STOP "$(spawned_pid wagent)"
nap 60
echo "RESET-TEST: SURVIVED 60s after SIGSTOP" | tee -a "$MARK"
sync
exit 1
