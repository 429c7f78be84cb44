#!/usr/bin/env bash
# Everything the lent GPU machine needs, in one command, run from the repository root there:
#
#   1. install the wheels carried in .whl/ (made here by `make device-wheels`: gymnasium and
#      farama-notifications for the env part, bitsandbytes for NF4) into a target folder and put it
#      on PYTHONPATH; the machine's image has torch, transformers, psutil, nvidia-ml-py and
#      matplotlib, lacks these, and reaches no package registry;
#   2. run benchmarks/gpu.py on CUDA with a time budget (BUDGET_S, default 400 s) that ends well
#      inside the device's 10-minute command limit; `timeout` stops it 60 s past the budget at the
#      latest, and the script rewrites its JSON after every part, so a cut run keeps what it measured;
#   3. leave under $OUT: gpu_<device>.json, gpu_<device>.png, gpu.log and device.txt (nvidia-smi,
#      versions, pip's install log).
#
# Extra arguments go to benchmarks.gpu (e.g. --parts models,env or --models smollm2-135m).
# Through the device tool (the wheels ride along as an ignored folder):
#   run(command="bash scripts/device_run.sh", carry=[".whl"], timeout_s=480)
set -uo pipefail

OUT="${OUT:-$PWD/runs/device}"
SITE="${DEVICE_SITE:-/tmp/dynprune-site}"
BUDGET_S="${BUDGET_S:-400}"
mkdir -p "$OUT"

{
    nvidia-smi || echo "nvidia-smi failed"
    python3 -c "import sys, torch, transformers; print(sys.version); print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} >"$OUT/device.txt" 2>&1

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl >>"$OUT/device.txt" 2>&1 || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no .whl/*.whl: the env and NF4 parts will record their missing packages" | tee -a "$OUT/device.txt"
fi

export DYNPRUNE_CACHE="${DYNPRUNE_CACHE:-/tmp/dynprune-cache}" PYTHONUNBUFFERED=1
timeout --signal=INT --kill-after=20 $((${BUDGET_S%.*} + 60)) \
    python3 -m benchmarks.gpu --device cuda --budget-s "$BUDGET_S" --out "$OUT/gpu_{device}.json" "$@" 2>&1 \
    | tee "$OUT/gpu.log"
rc=${PIPESTATUS[0]}
ls -la "$OUT"
exit "$rc"
