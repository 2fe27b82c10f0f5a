#!/usr/bin/env bash
# Stop Ray on this machine.
#   bash ray_utils/stop_ray.sh                 # every Ray process of this user here (ray stop --force)
#   bash ray_utils/stop_ray.sh --temp-dir DIR  # only the node started with start_ray.sh --temp-dir DIR: other
#                                              # Ray instances on the machine (a local run_embodiment.sh) live on
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY="${RAY:-$ROOT/.venv/bin/ray}"
[ -x "$RAY" ] || RAY="$(command -v ray)"

if [ $# -eq 0 ]; then
    exec "$RAY" stop --force
fi
if [ "$1" != "--temp-dir" ] || [ $# -ne 2 ]; then
    sed -n '2,5p' "$0" >&2; exit 2
fi
TEMP_DIR="$(cd "$2" && pwd)"  # absolute, as Ray puts it on its processes' command lines
# The node's own processes (GCS, raylet, monitors) name its session directory, DIR/session_*, on their command
# lines (this script's names DIR only); its workers exit when their raylet does.
PATTERN="$TEMP_DIR/session_"
pkill -TERM -f -- "$PATTERN" || { echo "stop_ray.sh: no Ray process uses $TEMP_DIR" >&2; exit 0; }
for _ in $(seq 50); do
    pgrep -f -- "$PATTERN" >/dev/null || exit 0
    sleep 0.2
done
pkill -KILL -f -- "$PATTERN" || true
