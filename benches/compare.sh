#!/usr/bin/env bash
# glimpse vs ONNX Runtime + Pillow on the same bundle and images, in one run: per-stage
# latency (1 thread), throughput (1 thread and all cores) and peak memory, with ratios
# (glimpse / reference; below 1.0 means glimpse is faster or smaller).
#
# usage: benches/compare.sh [MODEL.onnx] [IMAGE_DIR] [ITERATIONS]
# env:   GLIMPSE_BIN (default target/release/glimpse), REFERENCE_PYTHON (a python with
#        onnxruntime, pillow and numpy; see benches/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-models/efficientnet-lite0.onnx}"
DIR="${2:-samples}"
ITERATIONS="${3:-10}"
GLIMPSE="${GLIMPSE_BIN:-target/release/glimpse}"
PY="${REFERENCE_PYTHON:-python3}"
ALL=$(nproc)

# (reference threads, glimpse options): single-threaded; all cores on one image at a time
# (latency); all cores as parallel workers (throughput).
for config in "1|--threads 1" "$ALL|--intra-threads $ALL" "$ALL|--threads $ALL"; do
  threads="${config%%|*}"
  read -r -a glimpse_opts <<< "${config#*|}"
  ours=$("$GLIMPSE" bench --model "$MODEL" --images "$DIR" "${glimpse_opts[@]}" \
    --iterations "$ITERATIONS" -f json)
  ref=$(PYTHONPATH=benches "$PY" benches/reference.py "$MODEL" "$DIR" --threads "$threads" \
    --iterations "$ITERATIONS")
  python3 - "$threads" "$ours" "$ref" <<'PY'
import json, sys
threads, ours, ref = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"\n{ours['model']}: {ours['images']} images x {ours['iterations']} passes; "
      f"glimpse: {ours['threads']} worker(s) x {ours['intra_threads']} thread(s) per inference; "
      f"reference ({ref['runtime']}): {threads} intra-op thread(s)")
print("| figure | glimpse | reference | ratio |\n|---|---:|---:|---:|")
def row(name, a, b, unit):
    print(f"| {name} | {a:.2f} {unit} | {b:.2f} {unit} | {a / b:.2f} |")
for stage in ["decode_ms", "preprocess_ms", "inference_ms", "total_ms"]:
    row(f"{stage[:-3]} p50", ours[stage]["p50"], ref[stage]["p50"], "ms")
row("total p99", ours["total_ms"]["p99"], ref["total_ms"]["p99"], "ms")
row("throughput", ours["images_per_second"], ref["images_per_second"], "img/s")
row("model load", ours["load_ms"], ref["load_ms"], "ms")
row("peak RSS", ours["peak_rss_mib"], ref["peak_rss_mib"], "MiB")
PY
done
