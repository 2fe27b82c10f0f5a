#!/usr/bin/env bash
# Start a Ray node for rlinf_wm.
#   Head:   bash ray_utils/start_ray.sh head   [--port 6379] [--num-cpus N] [--num-gpus N] [--temp-dir DIR]
#   Worker: bash ray_utils/start_ray.sh worker --address HEAD_IP:6379 [--num-cpus N] [--num-gpus N]
# Then, on the head node: export RAY_ADDRESS=HEAD_IP:6379 and launch run_embodiment.sh.
# --temp-dir (head only, as in Ray) gives the node its own Ray directory: stop_ray.sh --temp-dir DIR stops it alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY="${RAY:-$ROOT/.venv/bin/ray}"
[ -x "$RAY" ] || RAY="$(command -v ray)"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" RAY_USAGE_STATS_ENABLED=0

usage() { sed -n '2,6p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
ROLE="$1"; shift
PORT=6379 ADDRESS="" NUM_CPUS="" NUM_GPUS="" TEMP_DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT="$2"; shift 2 ;;
        --address) ADDRESS="$2"; shift 2 ;;
        --num-cpus) NUM_CPUS="$2"; shift 2 ;;
        --num-gpus) NUM_GPUS="$2"; shift 2 ;;
        --temp-dir) TEMP_DIR="$2"; shift 2 ;;
        *) echo "start_ray.sh: unknown option $1" >&2; usage ;;
    esac
done
OPTIONS=()
[ -n "$NUM_CPUS" ] && OPTIONS+=(--num-cpus "$NUM_CPUS")
[ -n "$NUM_GPUS" ] && OPTIONS+=(--num-gpus "$NUM_GPUS")

case "$ROLE" in
    head)
        [ -n "$TEMP_DIR" ] && OPTIONS+=(--temp-dir "$TEMP_DIR")
        "$RAY" start --head --port "$PORT" --include-dashboard=false --disable-usage-stats "${OPTIONS[@]}" >&2
        IP="$(hostname -I 2>/dev/null | awk '{print $1}')"
        echo "RAY_ADDRESS=${IP:-127.0.0.1}:$PORT"
        ;;
    worker)
        [ -n "$ADDRESS" ] || { echo "start_ray.sh worker needs --address HEAD_IP:PORT" >&2; exit 2; }
        [ -z "$TEMP_DIR" ] || { echo "start_ray.sh: --temp-dir is for the head node only (Ray's rule)" >&2; exit 2; }
        "$RAY" start --address "$ADDRESS" --disable-usage-stats "${OPTIONS[@]}" >&2
        echo "RAY_ADDRESS=$ADDRESS"
        ;;
    *) usage ;;
esac
