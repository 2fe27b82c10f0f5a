#!/usr/bin/env bash
# Create .venv and install rlinf_wm with everything it needs. Idempotent: a second run with
# unchanged requirements only checks a stamp. Usage: bash requirements/install.sh [extra ...]
#   extras: test (default set also includes it), libero, gpu
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${RLINF_WM_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
EXTRAS="test${*:+,$(IFS=,; echo "$*")}"

# Offscreen rendering for MuJoCo: EGL, else OSMesa from apt.
ensure_opengl() {
    if ldconfig -p 2>/dev/null | grep -q "libEGL.so.1"; then return; fi
    if ldconfig -p 2>/dev/null | grep -q "libOSMesa"; then return; fi
    echo "[install] no EGL/OSMesa found: installing an OpenGL backend with apt" >&2
    if command -v apt-get >/dev/null; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libegl1 libosmesa6 >/dev/null
    else
        echo "[install] WARNING: no apt-get; install libEGL or libOSMesa yourself for rendering" >&2
    fi
}
ensure_opengl

# The stamp holds the requirements' hash and the installed extras: up to date when the hash matches and
# every wanted extra is installed (so the test setup's libero extra survives a plain quickstart setup).
STAMP="$VENV/.rlinf_wm_install_stamp"
HASH="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(head -n1 "$STAMP")" = "$HASH" ]; then
    INSTALLED="$(sed -n 2p "$STAMP")"
    missing=""
    for extra in ${EXTRAS//,/ }; do [[ ",$INSTALLED," == *",$extra,"* ]] || missing="$missing $extra"; done
    if [ -z "$missing" ]; then
        echo "[install] up to date ($VENV)"
        exit 0
    fi
    EXTRAS="$INSTALLED,${missing# }"; EXTRAS="${EXTRAS// /,}"
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip
# torch first: otherwise a dependency pulls a multi-GB CUDA build.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -c requirements/constraints.txt -e ".[$EXTRAS]"
printf '%s\n%s\n' "$HASH" "$EXTRAS" > "$STAMP"
echo "[install] done: $VENV"
