#!/usr/bin/env bash
# Runs every fuzz target (or those named) for a bounded time and prints a table:
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]        (default 300 s, all targets)
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly compiler for the sanitizer
# flags: `cargo +nightly` when rustup has one, else the stable compiler with
# RUSTC_BOOTSTRAP=1. Working corpora grow in fuzz/targets/corpus/<target>/ (seeded from
# the repository's real files); crashes land in fuzz/targets/artifacts/<target>/ and are
# listed at the end.
set -euo pipefail
cd "$(dirname "$0")/targets"

seconds="${1:-300}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(decode model bundle_meta raw_frames http)

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
# A target dir of its own: everything is built with sanitizer instrumentation.
export CARGO_TARGET_DIR="${GLIMPSE_FUZZ_TARGET_DIR:-$PWD/target}"

seed() {
  local target=$1 dir=corpus/$1
  mkdir -p "$dir"
  case $target in
    decode) cp -n ../../tests/corpus/images/* ../../samples/*.jpg ../../samples/*.png "$dir"/ ;;
    model) cp -n ../../tests/corpus/models/* "$dir"/ ;;
    raw_frames) cp -n ../../tests/corpus/raw/* "$dir"/ ;;
    http) cp -n ../../tests/corpus/http/* ../seeds/http/* "$dir"/ ;;
    bundle_meta) ;;
  esac
  if [ -d "../regressions/$target" ]; then cp -n ../regressions/"$target"/* "$dir"/ 2>/dev/null || true; fi
}

cargo "${toolchain[@]}" fuzz build --fuzz-dir .

results=()
for t in "${targets[@]}"; do
  seed "$t"
  mkdir -p artifacts/"$t"
  before=$(find artifacts/"$t" -type f | wc -l)
  log=$(mktemp)
  start=$(date +%s)
  # -rss_limit_mb: a target that needs more than 2 GB on a small input is a bug too.
  # -timeout: one input taking more than 10 s is reported as a hang.
  status=0
  cargo "${toolchain[@]}" fuzz run --fuzz-dir . "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=262144 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  # libFuzzer's own count of fuzzing seconds (the wall time above includes any rebuild).
  elapsed=$(awk '/^Done [0-9]+ runs in [0-9]+ second/ {print $5}' "$log" | tail -1)
  [ -n "$elapsed" ] || elapsed=$(( $(date +%s) - start ))
  after=$(find artifacts/"$t" -type f | wc -l)
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  units=$(find corpus/"$t" -type f | wc -l)
  results+=("$(printf '%-12s %8s %12s %8s %8s %8s' "$t" "${elapsed}s" "${execs:-?}" "${cov:-?}" "$units" "$((after - before))")")
  if [ $status -ne 0 ]; then
    echo "== $t stopped (status $status); what failed, then the end of its log:" >&2
    # The panic message or sanitizer report comes before a long stack trace.
    grep -a -A3 -E "panicked at|==[0-9]+==ERROR|^SUMMARY" "$log" | head -20 >&2 || true
    tail -40 "$log" | cut -c1-400 >&2
  fi
  rm -f "$log"
done

echo
printf '%-12s %8s %12s %8s %8s %8s\n' target cpu-time executions coverage corpus crashes
printf '%s\n' "${results[@]}"
new=$(find artifacts -type f | sort)
if [ -n "$new" ]; then
  echo
  echo "inputs in fuzz/targets/artifacts/ (reproduce: cargo fuzz run --fuzz-dir fuzz/targets TARGET FILE; keep as fuzz/regressions/TARGET/):"
  echo "$new"
fi
