#!/usr/bin/env bash
# Installs, idempotently, what cross/build.sh and cross/verify.sh need on a Debian 12 host
# (Ubuntu: the same package names): Debian's rustc-web (1.96) linked into rustup as the
# `debian` toolchain, the aarch64 and armhf cross gcc with their sysroots, the aarch64 std
# (multiarch), rust-web-src (to build std for a target whose package is missing: armv7),
# libclang (bindgen for the camera code) and qemu-user-static; and zig with cargo-zigbuild
# from PyPI (in a venv, $GLIMPSE_ZIG_VENV, default /opt/glimpse-zig) to link against glibc
# 2.17 so that the binaries run on JetPack 5 and Pi OS bullseye too.
#
# armhf is deliberately not added as a dpkg architecture: its bookworm-security index has
# been seen broken (size mismatch), which makes every `apt-get update` fail. The cross
# sysroot packages (libc6-dev-armhf-cross) are architecture-independent and enough to link;
# std for armv7 is built from source by cross/build.sh.
set -euo pipefail
. "$(dirname "$0")/targets.sh"

if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  echo "install-toolchain.sh: needs root or sudo for apt-get" >&2; exit 1
fi
say() { printf '[cross] %s\n' "$*" >&2; }

pkgs=(rustc-web cargo-web rust-web-src gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf
      libc6-dev-arm64-cross libc6-dev-armhf-cross linux-libc-dev-arm64-cross
      linux-libc-dev-armhf-cross qemu-user-static libclang-dev binutils dpkg)
missing=()
for p in "${pkgs[@]}"; do
  deb_installed "$p" || missing+=("$p")
done
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  say "adding the arm64 dpkg architecture (for Debian's aarch64 std)"
  $SUDO dpkg --add-architecture arm64
  missing+=(update-needed)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing: ${missing[*]/update-needed/}"
  # An index that fails to download (a mirror mid-sync) must not stop the rest.
  $SUDO apt-get update -qq || say "apt-get update reported errors; going on with the indexes it got"
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | grep -v '^update-needed$' || true)
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# qemu runs aarch64 programs with the multiarch loader and libc (qemu 7.2 hangs
# multi-threaded aarch64 programs given the cross sysroot as a prefix).
if ! deb_installed libc6:arm64; then
  say "installing libc6:arm64"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libc6:arm64 >/dev/null
fi

# Debian's std for aarch64 must be the exact version of rustc-web.
version=$(dpkg-query -W -f='${Version}' rustc-web)
if [ ! -d /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib ]; then
  say "installing libstd-rust-web-dev:arm64=$version"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "libstd-rust-web-dev:arm64=$version" >/dev/null \
    || say "libstd-rust-web-dev:arm64=$version is not installable: cross/build.sh will build std from rust-web-src"
fi

if command -v rustup >/dev/null; then
  if ! rustup toolchain list | grep -q '^debian'; then
    say "linking Debian's rustc into rustup as the 'debian' toolchain"
    rustup toolchain link debian /usr
  fi
else
  say "rustup is missing: cross/build.sh runs 'cargo +debian' (install rustup, or call /usr/bin/cargo directly)"
fi
# zig as the linker with glibc 2.17 symbols (cargo-zigbuild), both from PyPI, pinned.
zig_ready
if [ "$ZIG" != 1 ]; then
  say "installing zig and cargo-zigbuild (PyPI) into $ZIG_VENV"
  { python3 -m venv "$ZIG_VENV" \
    && "$ZIG_VENV/bin/pip" install -q --disable-pip-version-check \
       ziglang==0.17.1 cargo-zigbuild==0.24.0; } \
    || say "zig could not be installed: cross/build.sh will link with gcc (glibc 2.34 needed on the board)"
fi
say "toolchain ready: $(/usr/bin/rustc --version)"
