#!/usr/bin/env bash
# Downloads the wheels the GPU machine lacks (wheels.txt: cp312, manylinux x86_64) into a
# cache outside the repository, then copies them to .gpu/wheels, which git ignores and
# the device tool carries when told (`carry: [".gpu"]`):
#
#   bash tests/gpu/wheels.sh && du -sh .gpu/wheels    # about 26 MiB
#
# GPU_WHEELS_CACHE (default ~/.cache/lmms-operator/gpu-wheels) keeps them between runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
CACHE=${GPU_WHEELS_CACHE:-$HOME/.cache/lmms-operator/gpu-wheels}
mkdir -p "$CACHE"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
  manylinux1_x86_64; do platforms+=(--platform "$p"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$CACHE" -r tests/gpu/wheels.txt
rm -rf .gpu/wheels
mkdir -p .gpu/wheels
# Only the pinned versions: the cache may hold others from earlier lists.
"$PY" - "$CACHE" .gpu/wheels tests/gpu/wheels.txt <<'PYEOF'
import re, shutil, sys
from pathlib import Path
cache, dest, lst = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
wheels = {(norm(w.name.split("-")[0]), w.name.split("-")[1]): w for w in cache.glob("*.whl")}
for line in lst.read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        shutil.copy(wheels[(norm(name), version)], dest)
print(len(list(dest.glob("*.whl"))), "wheels in", dest)
PYEOF
