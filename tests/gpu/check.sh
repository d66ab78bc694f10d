#!/usr/bin/env bash
# The GPU script: every way the operator evaluates a model, run for real on one GPU with a
# tiny random-weight Qwen2-VL built from code (tiny_qwen2vl.py, no hub) and a local
# 32-image task. What each path proves: README.md beside this file. One line per path,
# `PASS|FAIL|SKIP <path>: ... samples/s ...`; the figures in $OUT/gpu-paths.json when OUT
# is set. Expected: about 3 minutes on an H100; each path has its own timeout (STEP_TIMEOUT).
#
#   WHEELS=.gpu/wheels bash tests/gpu/check.sh              # the device machine (DEVICE=cuda)
#   DEVICE=cpu PY=.venv/bin/python bash tests/gpu/check.sh  # here, on the CPU
#
# WHEELS: a folder of the wheels that machine lacks (tests/gpu/wheels.txt; wheels.sh
# downloads them), installed into a private folder first. PATHS=hf,mp,engine,served,
# openai-args chooses paths.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-$(command -v /opt/torch/.venv/bin/python3 || echo python3)}
DEVICE=${DEVICE:-cuda}
W=$(mktemp -d)
if [ -n "${WHEELS:-}" ]; then
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$W/site" "$WHEELS"/*.whl
  export PYTHONPATH="$W/site"
fi
export PYTHONPATH="$PWD/operator:$PWD/runner-image:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HOME="$W/hf" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
"$PY" - <<PYEOF
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
assert "$DEVICE" != "cuda" or torch.cuda.is_available(), "no CUDA device"
PYEOF
if [ "$DEVICE" = cuda ]; then
  # The runner's start check (lmms_runner/gpucheck.py) passes on this machine's driver.
  "$PY" -c "from lmms_runner import gpucheck as g; b = g.torch_build(); print('driver', g.query(), b)
assert g.check(1, b) is None, g.check(1, b)"
fi
exec "$PY" tests/gpu/paths.py --device "$DEVICE" --work "$W" \
  --timeout "${STEP_TIMEOUT:-150}" --budget "${BUDGET:-420}" \
  --paths "${PATHS:-hf,mp,engine,served,openai-args}"
