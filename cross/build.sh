#!/usr/bin/env bash
# Builds size-optimized release `glimpse` binaries (with the V4L2 camera code) for ARM
# boards into cargo's usual target/<triple>/release/. Run cross/install-toolchain.sh first.
#
#   cross/build.sh [aarch64|armv7|all]        (default: all)
#
# GLIMPSE_FEATURES replaces the cargo feature flags (default `--features camera`: every
# subcommand with V4L2), e.g. `--no-default-features --features cli,camera` for a board
# without the daemon (the feature costs: cross/README.md).
#
# Linking: with zig (installed by install-toolchain.sh), against glibc 2.17 via
# cargo-zigbuild (GLIMPSE_GLIBC to change it), so one binary runs on JetPack 5 and 6 and
# Pi OS bullseye and bookworm; without zig, with the cross gcc against this host's glibc.
# Profile: the `release` profile with fat LTO, one codegen unit and stripped symbols (set
# here through CARGO_PROFILE_RELEASE_*, so that host test builds stay quick). panic stays
# `unwind`: the daemon turns a panic inside one inference into a 500 and keeps serving.
# armv7: Debian's armhf std package is not always installable (its security index has been
# seen broken); without it, std is built from Debian's rust-web-src (RUSTC_BOOTSTRAP=1,
# -Zbuild-std, about 80 s more).
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/targets.sh

which=("${1:-all}")
[ "${which[0]}" = all ] && which=(aarch64 armv7)

export CARGO_PROFILE_RELEASE_LTO=fat
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
# GLIMPSE_STRIP=false keeps the symbols (to see what the bytes are: nm --size-sort).
export CARGO_PROFILE_RELEASE_STRIP=${GLIMPSE_STRIP:-true}
export CARGO_PROFILE_RELEASE_OPT_LEVEL=3

for arch in "${which[@]}"; do
  [ "$arch" != x86_64 ] || { echo "x86_64 is the host: cargo build --release" >&2; exit 2; }
  target "$arch"
  triple=$TRIPLE
  if [ ${#STD_ARGS[@]} -gt 0 ] && [ ! -d /usr/lib/rustlib/src/rust/library ]; then
    echo "$triple: neither Debian's std for it nor rust-web-src is installed (run cross/install-toolchain.sh)" >&2
    exit 1
  fi
  # bindgen (the camera's V4L2 bindings) must parse the target's headers, not the host's.
  var="BINDGEN_EXTRA_CLANG_ARGS_${triple//-/_}"
  headers=/usr/$GNU/include
  [ -f "$headers/linux/videodev2.h" ] || headers=/usr/include/$GNU
  export "$var=--target=$GNU -I$headers"
  # Size: dependencies at opt-level "s" but the crates an image goes through at 3 (see
  # HOT_CRATES in targets.sh).
  size_profile
  echo "=== $triple" >&2
  start=$(date +%s)
  # zig links against glibc $GLIBC (cargo-zigbuild's `<triple>.<glibc>` target); the
  # binary still lands in target/<triple>/release/. Without zig: gcc and this host's glibc.
  zig_ready
  if [ "$ZIG" = 1 ]; then
    build=(zigbuild --target "$triple.$GLIBC")
  else
    echo "$triple: zig is not installed (cross/install-toolchain.sh): linking with gcc, the binary needs this host's glibc" >&2
    build=(build --target "$triple")
  fi
  read -ra features <<<"${GLIMPSE_FEATURES:---features camera}"
  env "${BOOTSTRAP[@]}" cargo +debian "${build[@]}" "${PROFILE_ARGS[@]}" --release -j "${GLIMPSE_JOBS:-2}" \
    -p glimpse-runtime "${features[@]}" "${STD_ARGS[@]}"
  bin="${CARGO_TARGET_DIR:-target}/$triple/release/glimpse"
  echo "$bin: $(stat -c %s "$bin") bytes, needs glibc $(newest_glibc "$bin"), built in $(( $(date +%s) - start )) s" >&2
done
