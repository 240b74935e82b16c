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
