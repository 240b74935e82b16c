#!/usr/bin/env bash
# glimpse against ONNX Runtime on emulated ARM cores, in instructions per image: the same
# model files, the same qemu-user and insn plugin, one worker and one intra-op thread on
# both sides. Prints a table, then one JSON object per line:
#   {"engine":"glimpse"|"onnxruntime","model":"<file>","cpu":"cortex-a72",...,"instructions_per_image":N}
#
# usage: cross/arm-bench.sh [MODEL.onnx ...]
#   Without models: EfficientNet-Lite0 as shipped (float) and in each int8 form
#   `glimpse-train quantize` makes (--mode weights, static, mixed), and the shipped
#   Fashion-MNIST small CNN, float and int8, the int8 files made in the work folder on
#   first use (calibrated and gated by quantize as a user runs it).
#
# env:  CPUS                default "cortex-a72 cortex-a76 cortex-a15" (aarch64 binary on
#                           the first two, armv7 on the A15; ONNX Runtime has no armv7
#                           wheel, so it is counted on the aarch64 cores only)
#       GLIMPSE_AARCH64_BIN, GLIMPSE_ARMV7_BIN   board binaries (default: cross/build.sh's,
#                           built when missing: ~25 min each cold)
#       GLIMPSE_ARM_BENCH_DIR  work folder (default ~/.cache/glimpse-arm-bench)
#
# Per image: glimpse classifies photo 1, then photos 1-6, in two processes; the difference
# / 5 is the cost of one classification of a real photo (decode, preprocess, inference)
# without start-up and model loading. ONNX Runtime (cross/ort-bench, the PyPI wheel's
# libonnxruntime.so for manylinux aarch64) runs 1 and 6 inferences on a fixed input:
# inference only, so glimpse's figure includes work ONNX Runtime's does not.
#
# Under qemu-user both read the host's /proc/cpuinfo: ONNX Runtime's cpuinfo library
# crashes on an x86 one. Each run sees an ARM one for the emulated core instead (a bind
# mount inside `unshare -m`), and tract is told the core's part number
# (TRACT_CPU_AARCH64_OVERRIDE_CPU_PART); SDOT support both read from the auxiliary vector,
# which qemu fills in for the -cpu model (cortex-a76 has asimddp, cortex-a72 has not).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
root=$PWD
. cross/targets.sh
. cross/insn.sh

CPUS=${CPUS:-cortex-a72 cortex-a76 cortex-a15}
WORK=${GLIMPSE_ARM_BENCH_DIR:-$HOME/.cache/glimpse-arm-bench}
ORT_VERSION=1.31.1
TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$WORK"
say() { printf '[arm-bench] %s\n' "$*" >&2; }

# --- what the runs need -----------------------------------------------------------------
insn_ready
for p in libstdc++6:arm64 libgcc-s1:arm64; do
  deb_installed "$p" && continue
  say "installing $p (ONNX Runtime's C++ runtime under qemu)"
  DEBIAN_FRONTEND=noninteractive insn_sudo apt-get install -y -qq --no-install-recommends "$p" >/dev/null
done

board_bin() { # arch -> path of the glimpse binary for it, built when missing
  local arch=$1 var bin
  var=GLIMPSE_${arch^^}_BIN
  target "$arch"
  bin=${!var:-$TARGET_DIR/$TRIPLE/release/glimpse}
  if [ ! -x "$bin" ]; then
    say "$bin is missing: building it (cross/build.sh $arch)"
    bash cross/build.sh "$arch" >&2
  fi
  echo "$bin"
}

ort_lib() { # the aarch64 libonnxruntime.so from the PyPI wheel, unpacked once
  local dir="$WORK/onnxruntime-$ORT_VERSION-aarch64" dl
  if ! compgen -G "$dir/onnxruntime/capi/libonnxruntime.so*" >/dev/null; then
    say "fetching onnxruntime==$ORT_VERSION for manylinux aarch64 from PyPI"
    dl=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_27_aarch64 \
      --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --python-version 3.11 \
      -d "$dl" "onnxruntime==$ORT_VERSION"
    mkdir -p "$dir"
    unzip -q -o "$dl"/onnxruntime-*.whl 'onnxruntime/capi/libonnxruntime.so*' -d "$dir"
    rm -rf "$dl"
  fi
  compgen -G "$dir/onnxruntime/capi/libonnxruntime.so*" | head -1
}

ort_harness() { # cross/ort-bench for aarch64, in a target folder of its own (its own lock)
  local dir="$TARGET_DIR/ort-bench"
  target aarch64
  ( cd cross/ort-bench && env "${BOOTSTRAP[@]}" cargo +debian build --quiet --release --target "$TRIPLE" \
      --target-dir "$dir" -j "${GLIMPSE_JOBS:-2}" "${STD_ARGS[@]}" ) >&2
  echo "$dir/$TRIPLE/release/glimpse-ort-bench"
}

host_train() {
  local bin="$TARGET_DIR/release/glimpse-train"
  [ -x "$bin" ] || cargo build --release -p glimpse-trainer -j "${GLIMPSE_JOBS:-2}" >&2
  echo "$bin"
}

# --- the files: photos and models --------------------------------------------------------
photos_imagenet() {
  local d=/usr/share/darknet/data f out=()
  for f in dog eagle giraffe horses kite person; do
    [ -f "$d/$f.jpg" ] || { say "$d/$f.jpg is missing (apt-get install darknet; tests/setup.sh does)"; return 1; }
    out+=("$d/$f.jpg")
  done
  echo "${out[@]}"
}

# Six Fashion-MNIST test images as PNG files, what a user would classify.
photos_fashion() {
  local dir="$WORK/fashion-photos"
  if [ ! -f "$dir/5.png" ]; then
    mkdir -p "$dir"
    python3 - /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz "$dir" <<'PY'
import gzip, struct, sys, zlib
data = gzip.open(sys.argv[1]).read()
n, h, w = struct.unpack(">III", data[4:16])
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
for i in range(6):
    px = data[16 + i * h * w:16 + (i + 1) * h * w]
    raw = b"".join(b"\0" + px[r * w:(r + 1) * w] for r in range(h))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    open(f"{sys.argv[2]}/{i}.png", "wb").write(png)
PY
  fi
  echo "$dir"/{0..5}.png
}

# int8 forms of MODEL into the work folder, calibrated and gated on CALIB: `glimpse-train
# quantize` as a user runs it (its gate on); a form the gate refuses is reported and left out.
quantized() { # model calib-args...
  local model=$1 name mode out train
  shift
  name=$(basename "$model" .onnx)
  train=$(host_train)
  for mode in weights static mixed; do
    out="$WORK/$name.int8-$mode.onnx"
    if [ ! -f "$out" ] || [ "$out" -ot "$train" ]; then
      say "quantizing $name (--mode $mode)"
      "$train" quantize "$model" --mode "$mode" --out "$out" "$@" >&2 \
        || { say "$name --mode $mode: refused by the gate (above); not counted"; continue; }
    fi
    echo "$out"
  done
}

fashion_model() { # the shipped Fashion-MNIST small CNN (models/README.md)
  local fm=/usr/share/datasets/fashion-mnist
  [ -f "$fm/t10k-labels-idx1-ubyte.gz" ] || { say "Fashion-MNIST is missing (apt-get install dataset-fashion-mnist)"; return 1; }
  echo models/fashion-mnist.onnx
}

# --- counting ------------------------------------------------------------------------------
cpuinfo() { # cpu -> an ARM /proc/cpuinfo for that core (what a board's kernel prints)
  local part features="fp asimd evtstrm crc32 cpuid"
  case "$1" in
    cortex-a72) part=0xd08 ;;
    cortex-a76) part=0xd0b; features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    cortex-a15) printf 'processor\t: 0\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm\nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x2\nCPU part\t: 0xc0f\nCPU revision\t: 3\n'; return ;;
    *) say "no cpuinfo for $1"; return 1 ;;
  esac
  printf 'processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 3\n' "$features" "$part"
}

# Instructions of CMD... under qemu on CPU, with that core's /proc/cpuinfo.
counted() { # cpu cmd...
  local cpu=$1 qemu=qemu-aarch64 info
  shift
  [ "$cpu" = cortex-a15 ] && qemu=qemu-arm
  info=$(mktemp)
  cpuinfo "$cpu" > "$info"
  unshare -m bash -c '
    set -euo pipefail; shopt -s inherit_errexit
    mount --bind "$1" /proc/cpuinfo
    . cross/insn.sh; QEMU_PLUGIN=$2; shift 2
    insn_count "$@"' _ "$info" "$QEMU_PLUGIN" "$qemu" "$cpu" "$@" || { rm -f "$info"; return 1; }
  rm -f "$info"
}

per_image() { # one six -> instructions per image
  (( $2 > $1 )) || { say "six runs counted no more than one ($2 <= $1)"; return 1; }
  echo $(( ($2 - $1) / 5 ))
}

glimpse_count() { # cpu bin model photos...
  local cpu=$1 bin=$2 model=$3 one six
  shift 3
  (
    export RUST_LOG=error
    case "$cpu" in
      cortex-a15) target armv7; export QEMU_LD_PREFIX="$QEMU_PREFIX" TRACT_CPU_ARM32_NEON=true ;;
      *) export TRACT_CPU_AARCH64_OVERRIDE_CPU_PART="$(cpu_part "$cpu")" ;;
    esac
    one=$(counted "$cpu" "$bin" classify --jobs 1 --top-k 1 --model "$model" "$1")
    six=$(counted "$cpu" "$bin" classify --jobs 1 --top-k 1 --model "$model" "$@")
    per_image "$one" "$six"
  )
}

ort_count() { # cpu harness lib model
  local one six
  one=$(counted "$1" "$2" "$3" "$4" 1)
  six=$(counted "$1" "$2" "$3" "$4" 6)
  per_image "$one" "$six"
}

# --- the run -------------------------------------------------------------------------------
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  effnet=models/efficientnet-lite0.onnx
  fashion=$(fashion_model)
  # Through files, not process substitution: a failure here must stop the run.
  quantized "$effnet" --calib /usr/share/darknet/data --calib samples > "$WORK/effnet.int8.list"
  quantized "$fashion" --calib /usr/share/datasets/fashion-mnist --eval-images 2000 > "$WORK/fashion.int8.list"
  mapfile -t eff_q < "$WORK/effnet.int8.list"
  mapfile -t fm_q < "$WORK/fashion.int8.list"
  models=("$effnet" "${eff_q[@]}" "$fashion" "${fm_q[@]}")
fi
# What each model is for: Fashion-MNIST files (by name) classify Fashion-MNIST images.
imagenet_photos=$(photos_imagenet)
fashion_photos=$(photos_fashion)

need_aarch64=0; need_armv7=0
for cpu in $CPUS; do [ "$cpu" = cortex-a15 ] && need_armv7=1 || need_aarch64=1; done
[ $need_aarch64 = 1 ] && { AARCH64_BIN=$(board_bin aarch64); ORT_LIB=$(ort_lib); ORT_BENCH=$(ort_harness); }
[ $need_armv7 = 1 ] && ARMV7_BIN=$(board_bin armv7)

table=("| model | engine | $(echo $CPUS | sed 's/ / | /g') |" "|---|---|$(for _ in $CPUS; do printf -- '---:|'; done)")
json=()
for model in "${models[@]}"; do
  name=$(basename "$model")
  case "$name" in
    fashion-mnist*) read -r -a photos <<<"$fashion_photos" ;;
    *) read -r -a photos <<<"$imagenet_photos" ;;
  esac
  for engine in glimpse onnxruntime; do
    row="| $name | $engine"
    for cpu in $CPUS; do
      if [ "$cpu" = cortex-a15 ]; then
        [ $engine = glimpse ] || { row="$row | n/a"; continue; }
        n=$(glimpse_count "$cpu" "$ARMV7_BIN" "$model" "${photos[@]}")
      elif [ $engine = glimpse ]; then
        n=$(glimpse_count "$cpu" "$AARCH64_BIN" "$model" "${photos[@]}")
      else
        n=$(ort_count "$cpu" "$ORT_BENCH" "$ORT_LIB" "$model")
      fi
      say "$name, $engine, $cpu: $n instructions per image"
      row="$row | $(awk -v n="$n" 'BEGIN { printf "%.1f M", n / 1e6 }')"
      json+=("{\"engine\":\"$engine\",\"model\":\"$name\",\"cpu\":\"$cpu\",\"instructions_per_image\":$n}")
    done
    table+=("$row |")
  done
done
printf '%s\n' "${table[@]}"
printf '%s\n' "${json[@]}"
