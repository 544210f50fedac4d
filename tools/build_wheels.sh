#!/usr/bin/env bash
# Build the two wheels equi-ext needs but PyPI cannot provide for torch 2.14.1 (CPU, CPython 3.11):
#   * mmcv 2.1.0 with its compiled ops: PyPI has only the sdist, whose setup.py pins -std=c++17
#     while torch 2.14's headers need C++20;
#   * detectron2 0.6: not published on PyPI; built from a source checkout.
# Run it inside a venv that already has torch==2.14.1, torchvision==0.29.1,
# "setuptools>=77.0.3,<81", wheel, ninja and numpy. Takes ~10-15 minutes on 2 cores.
#
# Usage: tools/build_wheels.sh OUT_DIR DETECTRON2_SOURCE_DIR
# Then:  EQUI_WHEELHOUSE=OUT_DIR bash tools/install.sh
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 OUT_DIR DETECTRON2_SOURCE_DIR (a git checkout of facebookresearch/detectron2)" >&2
  exit 2
fi
mkdir -p "$1"
out="$(cd "$1" && pwd)"
d2_src="$(cd "$2" && pwd)" || { echo "error: $2 is not a folder" >&2; exit 2; }
[[ -f "$d2_src/setup.py" ]] || { echo "error: $d2_src has no setup.py; is it a detectron2 checkout?" >&2; exit 2; }
python -c "import torch; assert torch.__version__.startswith('2.14.1'), torch.__version__" || {
  echo "error: activate a venv with torch 2.14.1 first (the ops only load with the torch they were built for)" >&2
  exit 2; }

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
jobs="$(nproc)"

echo "== mmcv 2.1.0 (ops) =="
python -m pip download --no-deps --no-binary :all: --no-build-isolation -d "$scratch" mmcv==2.1.0
tar -xzf "$scratch"/mmcv-2.1.0.tar.gz -C "$scratch"
# torch 2.14's headers use C++20 features; mmcv's setup.py hard-codes C++17.
sed -i "s/'-std=c++17'/'-std=c++20'/g" "$scratch"/mmcv-2.1.0/setup.py
grep -q "c++20" "$scratch"/mmcv-2.1.0/setup.py || { echo "error: could not raise mmcv's C++ standard" >&2; exit 1; }
(cd "$scratch"/mmcv-2.1.0 && MMCV_WITH_OPS=1 MAX_JOBS="$jobs" python setup.py -q bdist_wheel -d "$out")

echo "== detectron2 =="
MAX_JOBS="$jobs" python -m pip wheel --no-build-isolation --no-deps -w "$out" "$d2_src"

ls -l "$out"
