#!/usr/bin/env bash
# The runner's GPU path, end to end: a tiny Qwen2-VL built from code (no hub), a local
# image task (tests/fixtures/colortask.py, 32 images), `python -m lmms_runner` running
# real lmms-eval with the qwen2_vl backend on $DEVICE, then the results checked: every
# task scored, the model on the device asked for, the runner's summary and provenance.
#
#   DEVICE=cuda PY=python3 WHEELS=.gpu/wheels bash tests/gpu/check.sh    # a GPU machine
#   DEVICE=cpu PY=.venv/bin/python bash tests/gpu/check.sh                # here, slower
#
# WHEELS (optional): a folder of wheels that machine lacks (lmms-eval 0.7.3 and the 18
# packages it needs there, pydantic, decord; the list is in ../shared/GPU-NOTES.md),
# installed into a private folder first.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
W=$(mktemp -d)
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$W/site" "$WHEELS"/*.whl
  export PYTHONPATH="$W/site"
fi
export PYTHONPATH="$PWD/operator:$PWD/runner-image:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HOME="$W/hf" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
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
"$PY" tests/gpu/tiny_qwen2vl.py "$W/model" >/dev/null
"$PY" -c "from pathlib import Path; from tests.fixtures import colortask; colortask.write(Path('$W/tasks'), samples=32)"
cat > "$W/evalrun.yaml" <<YAML
apiVersion: eval.lmms.dev/v1alpha1
kind: EvalRun
metadata: {name: tiny-qwen2vl-colors}
spec:
  model:
    type: qwen2_vl
    pretrained: $W/model
    args: {device: $DEVICE, device_map: $DEVICE, max_pixels: "12544", min_pixels: "3136"}
  tasks: [colors]
  evaluation: {batchSize: 4, seed: 7}
YAML
start=$(date +%s.%N)
"$PY" -m lmms_runner --config "$W/evalrun.yaml" --include-path "$W/tasks" \
  --output "$W/out" --listen "" --hold-timeout 0 --termination-log "$W/termination" \
  >"$W/runner.log" 2>&1 || { tail -40 "$W/runner.log"; exit 1; }
end=$(date +%s.%N)
"$PY" - "$W" "$start" "$end" "$DEVICE" <<'PYEOF'
import json, sys
from pathlib import Path
w, start, end, device = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
term = json.loads((w / "termination").read_text())
assert term.get("ok") is True, term
results = sorted(w.glob("out/**/*_results.json"))
assert results, "no lmms-eval results file"
doc = json.loads(results[-1].read_text())
scores = doc["results"]["colors"]
assert "exact_match,none" in scores, scores
n = doc.get("n-samples", {}).get("colors", {}).get("effective")
assert n == 32, doc.get("n-samples")
log = (w / "runner.log").read_text()
prov = sorted(w.glob("out/**/lmms-runner.json"))
print(json.dumps({
    "device": device,
    "wall_s": round(end - start, 1),
    "samples": n,
    "exact_match": scores["exact_match,none"],
    "termination": term.get("tasks"),
    "provenance": json.loads(prov[-1].read_text()) if prov else None,
}, indent=1, default=str)[:3000])
PYEOF
