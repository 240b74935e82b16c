#!/usr/bin/env bash
# What converting one 640x480 camera frame to RGB costs on the boards, in ARM instructions
# under qemu's insn plugin: the SIMD conversions glimpse uses (yuvutils-rs) against the
# scalar loops they replaced, same binary, same run (runtime/examples/convert.rs, a real
# photo); and what one frame of a live view costs, the RGB frame encoded as the JPEG the
# MJPEG stream sends (runtime/examples/view_frame.rs). Each figure is
# (11 frames - 1 frame) / 10, so loading the photo cancels out.
#
#   cross/convert-bench.sh                     # Cortex-A72 and A76 (aarch64)
#   CPUS="cortex-a72 cortex-a76 cortex-a15" cross/convert-bench.sh   # armv7 too
#
# Builds the example for each target as the board binaries are built (cross/build.sh's
# profile: fat LTO, the hot crates at opt-level 3). yuvutils-rs picks its NEON code from
# the auxiliary vector, which qemu-user fills for the emulated core.
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/insn.sh
insn_ready

CPUS=${CPUS:-cortex-a72 cortex-a76}
SIZE=${SIZE:-640x480}
export CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
size_profile

build() { # arch -> the folder of the examples
  target "$1"
  zig_ready
  local build=(build --target "$TRIPLE")
  [ "$ZIG" = 1 ] && build=(zigbuild --target "$TRIPLE.$GLIBC")
  env "${BOOTSTRAP[@]}" cargo +debian "${build[@]}" "${PROFILE_ARGS[@]}" --release -j "${GLIMPSE_JOBS:-2}" \
    -p glimpse-runtime --no-default-features --features stream --example convert --example view_frame \
    "${STD_ARGS[@]}" >&2
  echo "${CARGO_TARGET_DIR:-target}/$TRIPLE/release/examples"
}

# Instructions per frame of one example's run: (11 frames - 1 frame) / 10.
per_frame() { # cpu example args...
  local cpu="$1" example="$2" arch=aarch64 qemu=qemu-aarch64 one eleven
  shift 2
  [ "$cpu" = cortex-a15 ] && arch=armv7 qemu=qemu-arm
  target "$arch"
  export QEMU_LD_PREFIX="$QEMU_PREFIX"
  one=$(insn_count "$qemu" "$cpu" "${bin[$arch]}/$example" 1 "$@")
  eleven=$(insn_count "$qemu" "$cpu" "${bin[$arch]}/$example" 11 "$@")
  echo $(( (eleven - one) / 10 ))
}

printf '| %s frame to RGB, instructions | %s |\n|---|%s\n' "$SIZE" "${CPUS// / | }" \
  "$(for _ in $CPUS; do printf -- '---:|'; done)"
declare -A bin
for cpu in $CPUS; do
  arch=aarch64; [ "$cpu" = cortex-a15 ] && arch=armv7
  [ -n "${bin[$arch]:-}" ] || bin[$arch]=$(build "$arch")
done
for format in yuyv nv12 i420; do
  for impl in scalar simd; do
    row="| $format, $impl |"
    for cpu in $CPUS; do
      n=$(per_frame "$cpu" convert "$SIZE" "$format" "$impl")
      row+=" $(awk -v n="$n" 'BEGIN { printf "%.2f M", n / 1e6 }') |"
      printf '{"format":"%s","impl":"%s","cpu":"%s","size":"%s","instructions_per_frame":%d}\n' \
        "$format" "$impl" "$cpu" "$SIZE" "$n" >&2
    done
    echo "$row"
  done
done
row="| a live-view frame: RGB to JPEG (quality 85) |"
for cpu in $CPUS; do
  n=$(per_frame "$cpu" view_frame "$SIZE")
  row+=" $(awk -v n="$n" 'BEGIN { printf "%.2f M", n / 1e6 }') |"
  printf '{"format":"view-jpeg","cpu":"%s","size":"%s","instructions_per_frame":%d}\n' "$cpu" "$SIZE" "$n" >&2
done
echo "$row"
