#!/usr/bin/env bash
# Counts the ARM instructions one inference executes, per model and emulated CPU, with
# qemu-user and its "insn" TCG plugin: wall time under emulation says nothing about a
# board, a count of executed guest instructions is a fair proxy for the work done.
#
# usage: cross/int8-instructions.sh GLIMPSE_ARM_BINARY IMAGE MODEL.onnx [MODEL.onnx ...]
#   (an aarch64 binary is counted on Cortex-A72 and A76 models, an armv7 one on a Cortex-A15;
#   CPUS="..." to choose)
#
# Needs qemu-user (dynamic: the -static build cannot load plugins), libc6:arm64 and the
# insn plugin: all installed or built on first use (cross/insn.sh; root or sudo for apt).
# `--build-plugin` only prepares them.
#
# Method: `glimpse classify` on the image once and six times; the difference / 5 is the
# cost of one classification (decode + preprocess + inference) without model loading.
# With one worker (--jobs 1): see cross/insn.sh on threads and the shared counter.
set -euo pipefail
. "$(dirname "$0")/targets.sh"

shopt -s inherit_errexit
. "$(dirname "$0")/insn.sh"
CPUS_DEFAULT="cortex-a72 cortex-a76"

if [ "${1:-}" = "--build-plugin" ]; then
  insn_ready
  echo "ready: $QEMU_PLUGIN"
  exit 0
fi

[ $# -ge 3 ] || { sed -n 2,16p "$0"; exit 2; }
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
insn_ready

count() { # cpu model n
  local cpu="$1" model="$2" n="$3" images=()
  for _ in $(seq "$n"); do images+=("$IMAGE"); done
  TRACT_CPU_AARCH64_OVERRIDE_CPU_PART=$(cpu_part "$cpu") RUST_LOG=error \
    insn_count "$QEMU_USER" "$cpu" "$BIN" classify --jobs 1 --model "$model" --top-k 1 "${images[@]}"
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
