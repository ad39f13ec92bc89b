#!/usr/bin/env bash
# Fetch, as wheels into .whl/, what bench/gpu.py needs and the device machine's image lacks (its package list:
# /work/.library/device/KINDS.md), at the versions this checkout's .venv runs. Then print the command to
# give the device tool (carry: [".whl"]). Run from the repository root, on a machine that reaches PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
for dist in diffusers monai pydantic pydantic_core annotated-types typing-inspection importlib_metadata; do
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$dist==$(version "$dist")"
done
du -sh .whl
cat <<'CMD'
device command (carry [".whl"]; ~9 minutes on one H200):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; nvidia-smi --query-gpu=name,memory.total --format=csv; PYTHONUNBUFFERED=1 python3 bench/gpu.py --budget-s 500 2>&1 | tee $OUT/gpu.txt
CMD
