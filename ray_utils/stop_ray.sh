#!/usr/bin/env bash
# Stop the Ray node(s) started on this machine by start_ray.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY="${RAY:-$ROOT/.venv/bin/ray}"
[ -x "$RAY" ] || RAY="$(command -v ray)"
"$RAY" stop --force
