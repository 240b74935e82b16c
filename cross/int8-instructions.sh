#!/usr/bin/env bash
# Counts the ARM instructions one inference executes, per model and emulated CPU, with
# qemu-user and its "insn" TCG plugin: wall time under emulation says nothing about a
# board, a count of executed guest instructions is a fair proxy for the work done.
#
# usage: cross/int8-instructions.sh GLIMPSE_ARM_BINARY IMAGE MODEL.onnx [MODEL.onnx ...]
#   (an aarch64 binary is counted on Cortex-A72 and A76 models, an armv7 one on a Cortex-A15;
#   CPUS="..." to choose)
#
# Needs: qemu-user (the dynamically linked qemu-aarch64: the -static build cannot load
# plugins), libc6:arm64 (multiarch), and the plugin, built from Debian's qemu source
# (no package ships it) by `cross/int8-instructions.sh --build-plugin`.
#
# Method: `glimpse classify` on the image once and six times; the difference / 5 is the
# cost of one classification (decode + preprocess + inference) without model loading.
# With one worker (--jobs 1): the plugin's inline counter is one plain 64-bit add shared
# by every guest thread, so threads running at once lose counts (two workers made one
# classification look 25% cheaper than it is).
set -euo pipefail
. "$(dirname "$0")/targets.sh"

PLUGIN_DIR="${GLIMPSE_QEMU_PLUGIN_DIR:-$HOME/.cache/glimpse-qemu-plugin}"
PLUGIN="$PLUGIN_DIR/libinsn.so"
CPUS_DEFAULT="cortex-a72 cortex-a76"

if [ "${1:-}" = "--build-plugin" ]; then
  # Debian's qemu source for the plugin API header and tests/plugin/insn.c (needs a
  # deb-src entry for bookworm; plugin API version must match the installed qemu).
  apt-get install -y -qq libglib2.0-dev pkg-config dpkg-dev >/dev/null
  mkdir -p "$PLUGIN_DIR/src" && cd "$PLUGIN_DIR/src"
  apt-get source --download-only -qq qemu
  tar xf qemu_*.orig.tar.* --wildcards '*/include/qemu/qemu-plugin.h' '*/tests/plugin/insn.c'
  src=$(ls -d qemu-*/ | head -1)
  gcc -shared -fPIC -O2 $(pkg-config --cflags glib-2.0) -I"$src/include/qemu" \
    -o "$PLUGIN" "$src/tests/plugin/insn.c" $(pkg-config --libs glib-2.0)
  echo "built $PLUGIN"
  exit 0
fi

[ $# -ge 3 ] || { sed -n 2,18p "$0"; exit 2; }
BIN="$1"; IMAGE="$2"; shift 2
# The binary's architecture, from its ELF header (e_machine: 0xb7 aarch64, 0x28 ARM).
case "$(od -An -tx1 -j18 -N1 "$BIN" | tr -d ' ')" in
  b7) QEMU_USER=qemu-aarch64 ;;
  28) QEMU_USER=qemu-arm; CPUS_DEFAULT=cortex-a15
      # armv7: its loader prefix (targets.sh), and NEON on (tract would read the host's
      # /proc/cpuinfo), as cross/verify.sh runs it.
      target armv7
      export QEMU_LD_PREFIX=$QEMU_PREFIX TRACT_CPU_ARM32_NEON=true ;;
  *) echo "$BIN: not an aarch64 or 32-bit ARM executable" >&2; exit 2 ;;
esac
CPUS="${CPUS:-$CPUS_DEFAULT}"
[ -f "$PLUGIN" ] || { echo "no $PLUGIN: run $0 --build-plugin first" >&2; exit 1; }

# Under qemu-user, tract reads the host's /proc/cpuinfo: tell it the emulated core's part
# number so it picks the kernels it would pick on the board (SDOT support it reads from
# the auxiliary vector, which qemu fills in for the chosen CPU).
part() {
  case "$1" in
    cortex-a53) echo 0xd03 ;; cortex-a55) echo 0xd05 ;; cortex-a72) echo 0xd08 ;;
    cortex-a76) echo 0xd0b ;; *) echo "" ;;
  esac
}

count() { # cpu model n
  local cpu="$1" model="$2" n="$3" log
  log=$(mktemp)
  local images=()
  for _ in $(seq "$n"); do images+=("$IMAGE"); done
  TRACT_CPU_AARCH64_OVERRIDE_CPU_PART=$(part "$cpu") RUST_LOG=error \
  "$QEMU_USER" -cpu "$cpu" -plugin "$PLUGIN,inline=on" -d plugin -D "$log" \
    "$BIN" classify --jobs 1 --model "$model" --top-k 1 "${images[@]}" >/dev/null
  sed -n 's/^insns: //p' "$log"
  rm -f "$log"
}

printf '| model | %s |\n|---|%s\n' "$(echo $CPUS | sed 's/ / | /g') (instructions per image)" "$(for _ in $CPUS; do printf -- '---:|'; done)"
for model in "$@"; do
  row="| $(basename "$model")"
  for cpu in $CPUS; do
    one=$(count "$cpu" "$model" 1)
    six=$(count "$cpu" "$model" 6)
    row="$row | $(( (six - one) / 5 ))"
  done
  echo "$row |"
done
