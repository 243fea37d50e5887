#!/usr/bin/env bash
# Peak and current memory of `edge run` over a long run on looped frames: prints one line
# every 30 s (elapsed s, VmRSS kB, VmHWM kB) so a leak shows as a rising column.
#
#   scripts/rss.sh [SECONDS] [FPS] [SOURCE]    defaults: 600 s, 15 frames/s, samples/
#
# Uses target/release/edge (cargo build --release -p edge) and a scratch data folder.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
fps=${2:-15}
source=${3:-samples}
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT

target/release/edge run --source "$source" --data "$data" --fps "$fps" \
    --duration "$seconds" --status-interval 60 2>"$data/edge.log" &
pid=$!
printf '%8s %10s %10s\n' elapsed_s rss_kB peak_kB
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
    now=$(( $(date +%s) - start ))
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$rss" ] && printf '%8s %10s %10s\n' "$now" "$rss" "$hwm"
    sleep 30
done
wait "$pid"
grep -E 'status|captures' "$data/edge.log" | tail -n 3 >&2
