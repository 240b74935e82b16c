#!/usr/bin/env bash
# The README's test command: installs the real test data (tests/setup.sh), then runs every
# test of the workspace in release mode (tract is far too slow unoptimized). Tests whose
# data could not be installed are skipped loudly and listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh

export GLIMPSE_SKIP_LOG="${GLIMPSE_SKIP_LOG:-${TMPDIR:-/tmp}/glimpse-skipped.$$}"
: > "$GLIMPSE_SKIP_LOG"
status=0
cargo test --release --workspace -j "${GLIMPSE_JOBS:-2}" "$@" || status=$?
if [ -s "$GLIMPSE_SKIP_LOG" ]; then
  echo
  echo "=== tests skipped for missing data ==="
  sort -u "$GLIMPSE_SKIP_LOG"
fi
rm -f "$GLIMPSE_SKIP_LOG"
exit $status
