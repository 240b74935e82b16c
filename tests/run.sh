#!/usr/bin/env bash
# The README's test command: installs the real test data (tests/setup.sh), then runs every
# test of the workspace in release mode (tract is far too slow unoptimized), with the V4L2
# camera code built in. Tests whose data could not be installed are skipped loudly and
# listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh

export GLIMPSE_SKIP_LOG="${GLIMPSE_SKIP_LOG:-${TMPDIR:-/tmp}/glimpse-skipped.$$}"
: > "$GLIMPSE_SKIP_LOG"
# The V4L2 camera code needs libclang to build (bindgen); it is tested whenever libclang
# is there (setup.sh installs it), and CI requires it. Decided here, before the long
# build, by the library bindgen loads: not by a bindgen panic ten minutes in.
. tests/prereqs.sh
features=()
missing="libclang (the library bindgen loads, and clang's headers) is missing after setup: install it with 'apt-get install libclang-dev' (or point LIBCLANG_PATH at a libclang.so)"
if libclang_usable; then
  features=(--features glimpse-runtime/camera)
elif [ "${GLIMPSE_REQUIRE_DATA:-}" = 1 ]; then
  echo "$missing; the camera code cannot be built" >&2
  exit 1
else
  echo "WARNING: $missing; building without the V4L2 camera code" >&2
  echo "SKIPPED the V4L2 camera code: $missing" >> "$GLIMPSE_SKIP_LOG"
fi
# The trainer's GPU code (burn's wgpu backend) is always built: it needs nothing at build
# time, and its test runs on any Vulkan adapter (lavapipe on CPU-only machines).
features+=(--features glimpse-trainer/gpu)
status=0
out="${TMPDIR:-/tmp}/glimpse-tests.$$"
cargo test --release --workspace "${features[@]}" -j "${GLIMPSE_JOBS:-2}" "$@" 2>&1 | tee "$out" \
  || status=${PIPESTATUS[0]}
# One closing line for the whole workspace (cargo prints one per test binary), also kept in
# $GLIMPSE_TEST_SUMMARY when set, for .ci/run to repeat at its very end.
summary=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
               END { printf "tests: %d passed, %d failed\n", p, f }' "$out")
rm -f "$out"
if [ -s "$GLIMPSE_SKIP_LOG" ]; then
  echo
  echo "=== tests skipped for missing data ==="
  sort -u "$GLIMPSE_SKIP_LOG"
fi
rm -f "$GLIMPSE_SKIP_LOG"
echo
echo "$summary"
[ -n "${GLIMPSE_TEST_SUMMARY:-}" ] && echo "$summary" > "$GLIMPSE_TEST_SUMMARY"
exit $status
