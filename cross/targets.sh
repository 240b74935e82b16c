# Sourced by the cross scripts: what each target is called where, in one place.
#
#   target ARCH     (aarch64, armv7 or x86_64) sets
#     TRIPLE       Rust target triple
#     GNU          gcc / sysroot prefix (/usr/$GNU)
#     DEB          Debian architecture
#     QEMU         qemu-user command with the emulated CPU (empty for x86_64)
#     QEMU_PREFIX  loader prefix for qemu: armv7 takes its loader from the cross sysroot
#                  (there is no armhf multiarch libc here, see install-toolchain.sh);
#                  aarch64 uses the multiarch libc6:arm64 and no prefix, because qemu 7.2
#                  with a prefix (-L, QEMU_LD_PREFIX) hangs multi-threaded aarch64 programs
#     STD_ARGS     cargo arguments to build std from rust-web-src when Debian's std package
#                  for the target is not installed (armv7), run with RUSTC_BOOTSTRAP=1
#                  (`env "${BOOTSTRAP[@]}" cargo ...` does that)
# The glibc the ARM binaries are linked against when zig is installed (cargo-zigbuild):
# 2.17 runs on every board glimpse supports (JetPack 5 has 2.31, Pi OS bullseye 2.31).
GLIBC=${GLIMPSE_GLIBC:-2.17}
ZIG_VENV=${GLIMPSE_ZIG_VENV:-/opt/glimpse-zig}
# The board binaries optimize every dependency for size (opt-level "s") but these, which
# an image goes through (decoding, resizing, tract's kernels and tensors, model parsing),
# at 3: a blanket "s" made inference 2.3x slower. The optsize attribute is per function,
# so it survives fat LTO. check.sh fails when one is no longer a dependency (renamed or
# replaced), which would silently put it at "s".
# tract-core is among them on both targets: at "s" (2.8 MB less on aarch64) float models
# lost only 0.3% (their work is in tract-linalg's NEON kernels), but int8 ones run
# tract-core's own loops (requantization, quantize/dequantize, zero-point sums) and "s"
# keeps LLVM from vectorizing them (BENCHMARKS.md, int8 on ARM).
HOT_CRATES=(tract-linalg tract-core tract-data ndarray matrixmultiply half num-traits smallvec
  fast_image_resize image zune-jpeg zune-core png fdeflate miniz_oxide adler2 simd-adler32
  crc32fast image-webp gif weezl moxcms pxfm bytemuck prost sha2 yuvutils-rs)
# Sets PROFILE_ARGS: cargo --config arguments for the opt-levels above (every target).
size_profile() {
  PROFILE_ARGS=(--config 'profile.release.package."*".opt-level="s"')
  local crate
  for crate in "${HOT_CRATES[@]}"; do
    PROFILE_ARGS+=(--config "profile.release.package.$crate.opt-level=3")
  done
}
# Whether Debian package $1 is installed (not merely known, removed or half-configured).
deb_installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
# The part number tract reads from /proc/cpuinfo for an emulated core (under qemu-user it
# reads the host's: TRACT_CPU_AARCH64_OVERRIDE_CPU_PART takes this instead); empty if unknown.
cpu_part() {
  case "$1" in
    cortex-a53) echo 0xd03 ;; cortex-a55) echo 0xd05 ;; cortex-a72) echo 0xd08 ;;
    cortex-a76) echo 0xd0b ;; *) echo "" ;;
  esac
}
# The newest glibc symbol version a binary needs ("2.17"): what a board's glibc must be.
newest_glibc() {
  readelf --dyn-syms -W "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1
}
# Sets ZIG=1 when cargo-zigbuild and zig are usable (their venv goes first in PATH).
zig_ready() {
  ZIG=0
  if [ -x "$ZIG_VENV/bin/cargo-zigbuild" ] && "$ZIG_VENV/bin/python" -m ziglang version >/dev/null 2>&1; then
    ZIG=1
    case ":$PATH:" in *":$ZIG_VENV/bin:"*) ;; *) export PATH="$ZIG_VENV/bin:$PATH" ;; esac
  fi
}

target() {
  case "$1" in
    aarch64) TRIPLE=aarch64-unknown-linux-gnu; GNU=aarch64-linux-gnu; DEB=arm64
             QEMU=(qemu-aarch64-static -cpu cortex-a72); QEMU_PREFIX= ;;
    armv7)   TRIPLE=armv7-unknown-linux-gnueabihf; GNU=arm-linux-gnueabihf; DEB=armhf
             QEMU=(qemu-arm-static -cpu cortex-a15); QEMU_PREFIX=/usr/arm-linux-gnueabihf ;;
    x86_64)  TRIPLE=x86_64-unknown-linux-gnu; GNU=x86_64-linux-gnu; DEB=amd64
             QEMU=(); QEMU_PREFIX= ;;
    *) echo "unknown target $1 (expected aarch64, armv7 or x86_64)" >&2; return 2 ;;
  esac
  STD_ARGS=()
  BOOTSTRAP=()
  if [ "$1" != x86_64 ] && [ ! -d "/usr/lib/rustlib/$TRIPLE/lib" ]; then
    STD_ARGS=(-Zbuild-std=std,panic_unwind)
    BOOTSTRAP=(RUSTC_BOOTSTRAP=1)
  fi
}
