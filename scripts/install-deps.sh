#!/bin/bash
# Installs everything the build, the tests, the VM tier and the packaging need on a
# fresh Debian 12 machine, and nothing that is already there. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# DEPS_ONLY=build: only what building and running the agent needs (scripts/demo.sh).
BUILD_PKGS=(pkg-config libudev-dev dbus dbus-daemon)
TEST_PKGS=(python3 systemd lintian dpkg-dev qemu-system-x86 busybox-static nvme-cli lvm2
           udev kmod e2fsprogs xfsprogs file procps util-linux)
if [ "${DEPS_ONLY:-}" = build ]; then APT_PKGS=("${BUILD_PKGS[@]}"); else APT_PKGS=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}"); fi
VIRTME_NG_VERSION=1.42
CARGO_DEB_VERSION=3.8.0

command -v cargo >/dev/null || {
    echo "[deps] no Rust toolchain: install one with rustup (https://rustup.rs), Rust 1.85 or newer;" \
         "Debian 12's own cargo package is too old" >&2
    exit 1
}
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "[deps] apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "${DEPS_ONLY:-}" = build ] && exit 0
if ! command -v vng >/dev/null || [ "$(vng --version 2>/dev/null | awk '{print $2}')" != "$VIRTME_NG_VERSION" ]; then
    echo "[deps] pip install virtme-ng==$VIRTME_NG_VERSION"
    python3 -m pip install -q "virtme-ng==$VIRTME_NG_VERSION"
    command -v pyenv >/dev/null && pyenv rehash || true
fi
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    echo "[deps] cargo install cargo-deb@$CARGO_DEB_VERSION"
    cargo install -q --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
