#!/usr/bin/env bash
# Create .venv and install equi-ext with its pinned dependencies.
#
# mmcv 2.1.0 (with ops) and detectron2 0.6 have no usable wheels on PyPI for
# torch 2.14.1, so they come from a wheelhouse folder: EQUI_WHEELHOUSE.
# To build that folder yourself, see tools/build_wheels.sh and the README.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EQUI_VENV:-$repo/.venv}"
python="${PYTHON:-python3.11}"

if [[ -z "${EQUI_WHEELHOUSE:-}" ]]; then
  echo "error: EQUI_WHEELHOUSE is not set. It must name a folder holding the mmcv-2.1.0 and" >&2
  echo "detectron2-0.6 wheels built for torch 2.14.1 (in this workspace: ../shared/wheels;" >&2
  echo "elsewhere: build them with tools/build_wheels.sh, see README 'Installing elsewhere')." >&2
  exit 2
fi
wheelhouse="$(cd "$EQUI_WHEELHOUSE" 2>/dev/null && pwd)" || {
  echo "error: EQUI_WHEELHOUSE=$EQUI_WHEELHOUSE is not a folder" >&2; exit 2; }
for pkg in mmcv-2.1.0 detectron2-0.6; do
  if ! compgen -G "$wheelhouse/$pkg-*.whl" >/dev/null; then
    echo "error: no $pkg wheel in EQUI_WHEELHOUSE=$wheelhouse. Build it with" >&2
    echo "tools/build_wheels.sh (see README 'Installing elsewhere'); PyPI has no usable one." >&2
    exit 2
  fi
done

if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1" "setuptools>=77.0.3,<81"
# --only-binary: never fall back to the 10-minute mmcv source build from PyPI.
"${pip[@]}" --find-links "$wheelhouse" --only-binary mmcv,detectron2 -e "$repo[dev]"
"$venv/bin/python" -c "import equi_ext, mmseg, mmcv.ops, detectron2.modeling" 2>/dev/null
echo "equi-ext installed in $venv"
