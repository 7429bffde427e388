#!/bin/bash
# Builds volfence and runs the agent on its built-in defaults (standalone fence backend: a
# lease in a local file, single host, no cross-host fencing) on a private D-Bus, shows
# `volfencectl status` answering, then stops the agent with SIGTERM and reports its exit code.
# Installs whatever it is missing first. Run as root (the agent owns /var/lib/volfence).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (the agent keeps its lease under /var/lib/volfence)" >&2; exit 1; }
DEPS_ONLY=build ./scripts/install-deps.sh
cargo build --release --bins
BIN=target/release
RUN=$(mktemp -d /tmp/volfence-demo.XXXXXX)
ADDR="unix:path=$RUN/bus"
dbus-daemon --session --address="$ADDR" --fork --print-pid > "$RUN/bus.pid"
cleanup() { kill "$(cat "$RUN/bus.pid")" 2>/dev/null || true; }
trap cleanup EXIT

echo "== starting volfenced on the private bus $ADDR (log: $RUN/volfenced.log)"
"$BIN/volfenced" --bus "$ADDR" 2> "$RUN/volfenced.log" &
PID=$!
for _ in $(seq 1 100); do   # up to 10 s for the name and the lease
    # Exit 3 ("not running") is expected until the agent owns its name: a poll, not a failure.
    state=$("$BIN/volfencectl" --bus "$ADDR" status --json 2>/dev/null | sed -n 's/.*"FenceState": "\(.*\)".*/\1/p' || true)
    [ "$state" = held ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$RUN/volfenced.log"; echo "demo: volfenced exited early" >&2; exit 1; }
    sleep 0.1
done
echo "== volfencectl status"
"$BIN/volfencectl" --bus "$ADDR" status
echo "== volfencectl status --json"
"$BIN/volfencectl" --bus "$ADDR" status --json
echo "== SIGTERM"
kill -TERM "$PID"
rc=0; wait "$PID" || rc=$?
echo "== agent log"
cat "$RUN/volfenced.log"
echo "volfenced exited with status $rc"
exit "$rc"
