#!/usr/bin/env bash
# Trainer speed: `glimpse-train bench` (burn) vs PyTorch CPU on the same small CNN, batch
# and thread count, in one run, with the ratio (glimpse / PyTorch steps per second; below
# 1.0 means burn is slower).
#
# usage: benches/train_compare.sh [IDX_DIR] [WIDTH] [BATCH] [STEPS]
# env:   GLIMPSE_TRAIN_BIN (default target/release/glimpse-train), TORCH_PYTHON (a python
#        with torch and numpy; see benches/README.md), THREADS (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-/usr/share/datasets/fashion-mnist}"
WIDTH="${2:-0.75}"
BATCH="${3:-64}"
STEPS="${4:-30}"
TRAIN="${GLIMPSE_TRAIN_BIN:-target/release/glimpse-train}"
PY="${TORCH_PYTHON:-python3}"
THREADS="${THREADS:-$(nproc)}"
common=(--width "$WIDTH" --batch-size "$BATCH" --steps "$STEPS" --threads "$THREADS")
ours=$("$TRAIN" bench "$DATA" "${common[@]}" -f json)
ref=$("$PY" benches/torch_train.py "$DATA" "${common[@]}")
python3 - "$ours" "$ref" <<'PY'
import json, sys
ours, ref = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"small-cnn width {ours['width']}, batch {ours['input']}, {ours['threads']} threads, "
      f"{ours['steps']} timed steps; {ours['framework']} vs {ref['framework']}")
print("| figure | glimpse-train | PyTorch | ratio |\n|---|---:|---:|---:|")
for name, key in [("step p50 (ms)", "p50"), ("step p90 (ms)", "p90")]:
    a, b = ours["step_ms"][key], ref["step_ms"][key]
    print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
a, b = ours["steps_per_second"], ref["steps_per_second"]
print(f"| steps/s | {a:.2f} | {b:.2f} | {a / b:.2f} |")
PY
