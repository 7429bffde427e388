#!/bin/bash
# Runs every test: formatting, lints, unit and integration tests, the Debian package (built
# and checked with lintian) and the real-kernel VM tier. Installs whatever it is missing.
# Prints per-stage timings and, last, one summary line "total: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
T0=$(date +%s)
LOG=$(mktemp -d /tmp/volfence-test.XXXXXX)
stage() { printf '\n===== %s (t=%ss)\n' "$1" "$(( $(date +%s) - T0 ))"; }
fail() { echo "test-all: FAILED at $1 (logs in $LOG)"; echo "total: ${PASSED:-0} passed, $(( ${FAILED:-0} + 1 )) failed"; exit 1; }
PASSED=0; FAILED=0

stage "install dependencies"
./scripts/install-deps.sh || fail "install-deps"

stage "cargo fmt --check"
cargo fmt --all --check || fail "cargo fmt --check"

stage "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || fail "cargo clippy"

stage "product crate graph"
# The test doubles and the API emulator are workspace members only tests depend on.
TREE=$(cargo tree -e normal -p volfence --prefix none) || fail "cargo tree"
! grep -E '^volfence-(testkit|kube-emulator) ' <<< "$TREE" || fail "product crate graph: a test double is a normal dependency"
echo "cargo tree -e normal -p volfence: $(sort -u <<< "$TREE" | wc -l) crates, no testkit, no emulator"

stage "cargo test"
cargo test --workspace 2>&1 | tee "$LOG/cargo-test.log"
rc=${PIPESTATUS[0]}
read -r p f < <(awk '/^test result:/{for(i=1;i<=NF;i++){if($i~/^passed;?$/)p+=$(i-1); if($i~/^failed;?$/)f+=$(i-1)}} END{print p+0, f+0}' "$LOG/cargo-test.log")
PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
echo "cargo test: $p passed, $f failed"
[ "$rc" -eq 0 ] || fail "cargo test"

stage "Debian package"
# every binary, the VM tier's API emulator included; cargo deb then reuses the product's
cargo build --release --workspace --bins 2>&1 | tail -2
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "cargo build --release"
cargo deb 2>&1 | tail -3
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "cargo deb"
DEB=$(ls -t target/debian/volfence_*_amd64.deb | head -1)
CONTENT=$(dpkg-deb -c "$DEB") || fail "dpkg-deb -c"
echo "$CONTENT"
lintian --fail-on error "$DEB" | tee "$LOG/lintian.log" || fail "lintian (errors in $DEB)"
for f in ./usr/bin/volfenced ./usr/bin/volfencectl ./usr/lib/systemd/system/volfenced.service \
         ./usr/share/dbus-1/system.d/org.volfence.Agent1.conf ./etc/volfence/config.toml \
         ./usr/share/man/man8/volfenced.8.gz ./usr/share/man/man8/volfencectl.8.gz \
         ./usr/share/man/man5/volfence.toml.5.gz ./usr/share/doc/volfence/claims.md \
         ./usr/share/doc/volfence/examples/rbac.yaml; do
    grep -q " $f\$" <<< "$CONTENT" || fail "package content: $f missing"
done
! grep -q 'kube-emulator' <<< "$CONTENT" || fail "package content: the API emulator is packaged"
! grep -E 'manual-page|manpage' "$LOG/lintian.log" || fail "lintian: man page warnings"
dpkg-deb -I "$DEB" conffiles | grep -qx /etc/volfence/config.toml || fail "package: config.toml is not a conffile"
echo "package OK: $DEB ($(du -h "$DEB" | cut -f1)); lintian: $(grep -c '^E:' "$LOG/lintian.log") errors, $(grep -c '^W:' "$LOG/lintian.log") warnings"

stage "VM tier (real kernel)"
VOLFENCE_DEB=$DEB ./tests/vm/run.sh 2>&1 | tee "$LOG/vm.log"
rc=${PIPESTATUS[0]}
read -r p f < <(grep -E '^[0-9]+ passed, [0-9]+ failed' "$LOG/vm.log" | tail -1 | awk '{print $1, $3}')
PASSED=$((PASSED + ${p:-0})); FAILED=$((FAILED + ${f:-0}))
[ "$rc" -eq 0 ] || fail "VM tier"

stage "done"
echo "total: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
