#!/usr/bin/env bash
# Set up (idempotent), then run the whole loop with caching:
# collect (+ near misses on Meta-World) -> SFT -> real-sim eval (recorded) -> world model -> GRPO in the world
# model -> real-sim eval.
# Arguments go to examples/quickstart.py (e.g. --smoke for a seconds-per-stage run, --force sft).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash requirements/install.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}" RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1
exec .venv/bin/python examples/quickstart.py "$@"
