#!/usr/bin/env bash
# Runs the ARM `glimpse` binaries under qemu-user on the sample photos and compares them
# with the x86_64 build: same top-1 on every photo and every top-5 probability within 1e-4.
# Also runs `glimpse info` and `glimpse camera --list` (the V4L2 code is linked in), and
# prints a table row per target: binary size, newest glibc symbol needed, result.
#
#   cross/verify.sh [aarch64|armv7|all]     (default: all that are built)
#
# Needs target/release/glimpse (cargo build --release -p glimpse-runtime) and the cross
# builds (cross/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/targets.sh

host=target/release/glimpse
[ -x "$host" ] || { echo "$host is not built (cargo build --release -p glimpse-runtime)" >&2; exit 1; }
which=("${1:-all}")
[ "${which[0]}" = all ] && which=(aarch64 armv7)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$host" classify samples/ -f json -k 5 > "$work/x86_64.jsonl"
status=0
rows=()
for arch in "${which[@]}"; do
  [ "$arch" != x86_64 ] || { echo "x86_64 is the reference, not a target to verify" >&2; exit 2; }
  target "$arch"
  triple=$TRIPLE
  # Under qemu tract reads the host's /proc/cpuinfo: say NEON is there, as on every Pi 2
  # and later, so that the NEON kernels are what is checked on armv7.
  [ "$arch" = armv7 ] && export TRACT_CPU_ARM32_NEON=true
  bin=target/$triple/release/glimpse
  if [ ! -x "$bin" ]; then
    [ "${1:-all}" = all ] && { echo "skipping $arch: $bin is not built" >&2; continue; }
    echo "$bin is not built (cross/build.sh $arch)" >&2; exit 1
  fi
  run() { QEMU_LD_PREFIX=$QEMU_PREFIX "${QEMU[@]}" "$bin" "$@"; }
  run classify samples/ -f json -k 5 > "$work/$arch.jsonl"
  run info > "$work/$arch.info"
  run camera --list > "$work/$arch.camera" 2>&1 || true
  grep -q . "$work/$arch.camera" || { echo "$arch: camera --list printed nothing" >&2; status=1; }
  verdict=$(python3 - "$work/x86_64.jsonl" "$work/$arch.jsonl" <<'PY'
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1])]
got = [json.loads(l) for l in open(sys.argv[2])]
assert len(ref) == len(got), f"{len(got)} results, expected {len(ref)}"
worst = 0.0
for r, g in zip(ref, got):
    assert r["path"] == g["path"], (r["path"], g["path"])
    assert r["label"] == g["label"], f'{r["path"]}: {g["label"]} vs {r["label"]} on x86_64'
    assert [t["index"] for t in r["top"]] == [t["index"] for t in g["top"]], r["path"]
    worst = max(worst, max(abs(a["probability"] - b["probability"]) for a, b in zip(r["top"], g["top"])))
assert worst <= 1e-4, f"largest probability difference {worst:.2e} > 1e-4"
print(f"same top-1 and top-5 on {len(ref)} photos, largest probability difference {worst:.1e}")
PY
) || { verdict="FAILED"; status=1; }
  size=$(stat -c %s "$bin")
  glibc=$(newest_glibc "$bin")
  rows+=("| $triple | $(awk -v s="$size" 'BEGIN{printf "%.1f MB", s/1e6}') | $glibc | $verdict |")
  echo "$arch: $verdict" >&2
done
echo "| target | binary (stripped) | newest glibc symbol | vs x86_64 on samples/ |"
echo "|---|---:|---:|---|"
printf '%s\n' "${rows[@]}"
exit $status
