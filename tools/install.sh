#!/usr/bin/env bash
# Create .venv and install equi-ext with both frameworks, from the package registry alone.
#
#   bash tools/install.sh [--dry-run]
#
# Two parts have no usable wheel on PyPI for torch 2.14 and are built here, once, into a cache:
#   * mmcv 2.1.0 with its ops: taken from $EQUI_WHEELHOUSE when set (a folder holding the wheel), else built
#     from mmcv's PyPI sdist (its setup.py forces -std=c++17; torch 2.14's headers need C++20): about 14 min on 2 cores.
#   * detectron2 0.6: built from PyPI's pb1-detectron2==0.6 sdist, patched by tools/patch_detectron2_sdist.py
#     (no C++ ops, model-zoo configs shipped, Pillow 10 / NumPy 2 fixes, a stand-in for detectron2._C): seconds.
# Versions come from constraints.txt (the tested set).
#
# Environment: EQUI_WHEELHOUSE (optional), EQUI_VENV (default .venv), PYTHON (default python3.11),
#              EQUI_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/equi-ext): built wheels are kept there.
# --dry-run: check the settings and say where each part would come from, then stop (creates and builds nothing).
set -euo pipefail

dry_run=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $arg (usage: bash tools/install.sh [--dry-run])" >&2; exit 2 ;;
  esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EQUI_VENV:-$repo/.venv}"
python="${PYTHON:-python3.11}"
constraints="$repo/constraints.txt"
pin() { sed -n "s/^$1==\(.*\)$/\1/p" "$constraints"; }
torch_version="$(pin torch)"
mmcv_version="$(pin mmcv)"
d2_version="$(pin pb1-detectron2)"
cache="${EQUI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/equi-ext}/wheels/torch-$torch_version"
step() { echo "[install $(date +%H:%M:%S)] $*"; }

command -v "$python" >/dev/null || { echo "error: $python not found; set PYTHON to a Python >= 3.10" >&2; exit 2; }
py_tag="$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"

wheelhouse=""
if [[ -n "${EQUI_WHEELHOUSE:-}" ]]; then
  wheelhouse="$(cd "$EQUI_WHEELHOUSE" 2>/dev/null && pwd)" || {
    echo "error: EQUI_WHEELHOUSE=$EQUI_WHEELHOUSE is not a folder" >&2; exit 2; }
  compgen -G "$wheelhouse/mmcv-$mmcv_version-$py_tag-*.whl" >/dev/null || {
    echo "error: EQUI_WHEELHOUSE=$wheelhouse has no mmcv-$mmcv_version wheel for $py_tag; unset it to build" >&2
    echo "mmcv from its PyPI sdist instead (about 15 minutes on 2 cores, cached in $cache)." >&2
    exit 2; }
fi

if [[ -n "$wheelhouse" ]]; then
  mmcv_source="the wheelhouse $wheelhouse"
elif compgen -G "$cache/mmcv-$mmcv_version-$py_tag-*.whl" >/dev/null; then
  mmcv_source="the cache $cache (built earlier)"
else
  mmcv_source="a build from mmcv's PyPI sdist (about 15 minutes on 2 cores), cached in $cache"
fi
if compgen -G "$cache/pb1_detectron2-$d2_version-*.whl" >/dev/null; then
  d2_source="the cache $cache (built earlier)"
else
  d2_source="a build from PyPI's pb1-detectron2==$d2_version sdist (seconds), cached in $cache"
fi
step "venv: $venv ($python); torch $torch_version"
step "mmcv $mmcv_version (ops): from $mmcv_source"
step "detectron2 $d2_version: from $d2_source"
if (( dry_run )); then
  step "dry run: nothing created or built"
  exit 0
fi

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
step "installing torch, torchvision and the build tools"
"${pip[@]}" install --quiet -c "$constraints" torch torchvision setuptools wheel ninja numpy

mkdir -p "$cache"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

if [[ -z "$wheelhouse" ]] && ! compgen -G "$cache/mmcv-$mmcv_version-$py_tag-*.whl" >/dev/null; then
  step "building mmcv $mmcv_version ops from the PyPI sdist: about 14 minutes on 2 cores; progress every 10 sources"
  "${pip[@]}" download --quiet --no-deps --no-binary :all: --no-build-isolation -d "$scratch" "mmcv==$mmcv_version"
  tar -xzf "$scratch/mmcv-$mmcv_version.tar.gz" -C "$scratch"
  # torch 2.14's headers use C++20; mmcv's setup.py hard-codes C++17.
  sed -i "s/'-std=c++17'/'-std=c++20'/g" "$scratch/mmcv-$mmcv_version/setup.py"
  grep -q "c++20" "$scratch/mmcv-$mmcv_version/setup.py" || { echo "error: could not raise mmcv's C++ standard" >&2; exit 1; }
  # ninja prints "[k/n] c++ ..." per source; show every tenth so a 10-minute build is visibly alive.
  (cd "$scratch/mmcv-$mmcv_version" && PYTHONUNBUFFERED=1 MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" \
     "$venv/bin/python" setup.py bdist_wheel -d "$cache" 2>&1) \
    | tee "$scratch/mmcv-build.log" \
    | awk -v start="$(date +%s)" 'match($0, /^\[[0-9]+\/[0-9]+\]/) { split(substr($0, 2, RLENGTH - 2), k, "/");
        if (k[1] % 10 == 0 || k[1] == k[2]) { printf "  mmcv: compiled %d of %d sources (%d s)\n", k[1], k[2],
        systime() - start; fflush() } }' || true
  compgen -G "$cache/mmcv-$mmcv_version-$py_tag-*.whl" >/dev/null || {
    echo "error: the mmcv build failed; its last lines:" >&2; tail -n 30 "$scratch/mmcv-build.log" >&2; exit 1; }
  step "mmcv wheel built: $(ls "$cache"/mmcv-"$mmcv_version"-"$py_tag"-*.whl)"
fi

if ! compgen -G "$cache/pb1_detectron2-$d2_version-*.whl" >/dev/null; then
  step "building detectron2 from PyPI's pb1-detectron2==$d2_version sdist"
  # Its setup.py imports torch, so even downloading it needs the venv's torch and --no-build-isolation.
  "${pip[@]}" download --quiet --no-deps --no-binary :all: --no-build-isolation -d "$scratch" \
    "pb1-detectron2==$d2_version"
  tar -xzf "$scratch/pb1-detectron2-$d2_version.tar.gz" -C "$scratch"
  "$venv/bin/python" "$repo/tools/patch_detectron2_sdist.py" "$scratch/pb1-detectron2-$d2_version"
  "${pip[@]}" wheel --quiet --no-deps --no-build-isolation -w "$cache" "$scratch/pb1-detectron2-$d2_version"
fi

step "installing equi-ext[mmseg,detectron2,bench,dev] and detectron2"
links=(--find-links "$cache")
[[ -n "$wheelhouse" ]] && links+=(--find-links "$wheelhouse")
"${pip[@]}" install --quiet -c "$constraints" "${links[@]}" --only-binary mmcv,pb1-detectron2 \
  -e "$repo[mmseg,detectron2,bench,dev]" pb1-detectron2
"$venv/bin/python" -W ignore -c "import equi_ext.mmseg, equi_ext.detectron2, mmcv.ops, detectron2.modeling"
step "equi-ext installed in $venv"
