#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra arguments go to pytest, e.g. -m "not slow".
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# With the libero extra: its simulator tests run in CI (they skip where it is not installed).
bash requirements/install.sh libero || exit 1
export MUJOCO_GL="${MUJOCO_GL:-egl}" RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1
.venv/bin/python -m pytest -ra "$@"
rc=$?
# pytest exits 5 when nothing was collected: that is a failure of the suite, say so plainly.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
