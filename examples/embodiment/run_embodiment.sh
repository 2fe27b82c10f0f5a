#!/usr/bin/env bash
# Launch an embodied RL experiment:
#   bash examples/embodiment/run_embodiment.sh <config> [hydra.key=value ...]
# Uses the Ray cluster at $RAY_ADDRESS, or starts a local one when it is unset.
# Writes logs/<timestamp>-<config>/ with the resolved config, run.log, TensorBoard events and checkpoints.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONFIG_DIR="$ROOT/examples/embodiment/config"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

list_configs() {
    for f in "$CONFIG_DIR"/*.yaml; do
        if grep -q "train_embodied_agent" "$f" 2>/dev/null; then basename "$f" .yaml; fi
    done | sed 's/^/  /'
}

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    echo "usage: bash examples/embodiment/run_embodiment.sh <config> [key=value ...]" >&2
    echo "available configs:" >&2; list_configs >&2
    exit 2
fi
CONFIG_NAME="${1%.yaml}"; shift
if [ ! -f "$CONFIG_DIR/$CONFIG_NAME.yaml" ]; then
    echo "run_embodiment.sh: unknown config '$CONFIG_NAME' (looked in $CONFIG_DIR)" >&2
    echo "available configs:" >&2; list_configs >&2
    exit 2
fi

LOG_DIR="${LOG_DIR:-$ROOT/logs/$(date +%Y%m%d-%H%M%S)-$CONFIG_NAME}"
case "$LOG_DIR" in *"'"*) echo "run_embodiment.sh: LOG_DIR must not contain a single quote: $LOG_DIR" >&2; exit 2;; esac
mkdir -p "$LOG_DIR"
LOG_DIR="$(cd "$LOG_DIR" && pwd)"  # absolute: the run itself starts in $ROOT
export MUJOCO_GL="${MUJOCO_GL:-egl}" RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" RAY_USAGE_STATS_ENABLED=0
export HYDRA_FULL_ERROR="${HYDRA_FULL_ERROR:-0}"
echo "[run_embodiment] config=$CONFIG_NAME log_dir=$LOG_DIR ray=${RAY_ADDRESS:-local}" | tee "$LOG_DIR/run.log"
cd "$ROOT"
set +e
"$PYTHON" examples/embodiment/train_embodied_agent.py --config-name "$CONFIG_NAME" \
    "runner.log_dir='$LOG_DIR'" "hydra.run.dir='$LOG_DIR/hydra'" "$@" 2>&1 | tee -a "$LOG_DIR/run.log"
rc=${PIPESTATUS[0]}
exit "$rc"
