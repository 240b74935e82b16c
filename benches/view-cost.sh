#!/usr/bin/env bash
# What the web page's live view costs the daemon on this machine, in one run: glimpse serve
# classifies a 640x480 camera (a real photo, looped by ffmpeg as raw frames at 5 fps) for
# the same time with 0, 1 and 4 viewers on its MJPEG stream (curl), and the CPU seconds it
# used (user + system, /proc/PID/stat) are compared. Each extra second over the 0-viewer
# run is the live view; divided by the frames sent (glimpse_view_frames_total), the CPU
# per streamed frame.
#
# usage: benches/view-cost.sh [SECONDS]      (default 20 per run)
# env:   GLIMPSE_BIN (default target/release/glimpse), VIEW_FPS (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-20}"
GLIMPSE="${GLIMPSE_BIN:-target/release/glimpse}"
VIEW_FPS="${VIEW_FPS:-5}"
TICKS=$(getconf CLK_TCK)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cpu_seconds() { # pid -> utime + stime in seconds
  awk -v t="$TICKS" '{ print ($14 + $15) / t }' "/proc/$1/stat"
}

metric() { # port name -> value
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'
}

run() { # viewers -> "cpu_seconds frames_sent"
  local viewers="$1" log="$work/serve.log" port pid start i
  ffmpeg -loglevel error -re -loop 1 -framerate 5 -i samples/chelsea.png \
    -vf scale=640:480,format=rgb24 -f rawvideo - 2>/dev/null |
    "$GLIMPSE" serve --listen 127.0.0.1:0 --raw - --size 640x480 --format rgb24 \
      --workers 1 --view-fps "$VIEW_FPS" 2>"$log" &
  for _ in $(seq 100); do
    port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$log")
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$log" >&2; exit 1; }
  pid=$(pgrep -n -f "glimpse serve --listen 127.0.0.1:0 --raw -")
  sleep 3 # the first frames, the model's first runs
  for i in $(seq "$viewers"); do
    curl -s -o /dev/null "http://127.0.0.1:$port/v1/cameras/default/stream.mjpeg" &
  done
  start=$(cpu_seconds "$pid")
  sleep "$SECONDS_PER_RUN"
  echo "$(awk -v a="$(cpu_seconds "$pid")" -v b="$start" 'BEGIN { print a - b }') $(metric "$port" glimpse_view_frames_total)"
  pkill -f "curl -s -o /dev/null http://127.0.0.1:$port/" || true
  kill "$pid"
  wait 2>/dev/null || true
}

read -r base _ < <(run 0)
echo "0 viewers: $base CPU s in ${SECONDS_PER_RUN} s (the camera classifying at 5 fps)"
for viewers in 1 4; do
  read -r cpu frames < <(run "$viewers")
  extra=$(awk -v a="$cpu" -v b="$base" 'BEGIN { print a - b }')
  per=$(awk -v e="$extra" -v f="$frames" 'BEGIN { printf "%.2f", (f > 0 ? e * 1000 / f : 0) }')
  core=$(awk -v e="$extra" -v s="$SECONDS_PER_RUN" 'BEGIN { printf "%.2f", 100 * e / s }')
  echo "$viewers viewer(s): $cpu CPU s, +$extra s ($core% of a core) for $frames frames sent: $per ms CPU per frame sent"
  printf '{"viewers":%d,"cpu_seconds":%s,"base_cpu_seconds":%s,"frames_sent":%d,"ms_cpu_per_frame_sent":%s,"percent_of_a_core":%s}\n' \
    "$viewers" "$cpu" "$base" "$frames" "$per" "$core" >&2
done
