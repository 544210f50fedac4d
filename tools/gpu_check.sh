#!/usr/bin/env bash
# GPU check: everything equi-ext runs, on a CUDA machine, after `bash tools/install.sh`.
#
#   bash tools/gpu_check.sh            on a machine with a CUDA GPU; writes docs/benchmarks/speed/gpu/
#   bash tools/gpu_check.sh --dry-run  the same steps on the CPU with tiny settings, into a temporary folder
#                                      (checks that every step and flag still works; the test suite runs it)
#
# Steps: the demo data; the tests marked `gpu`; the README's first command; the Detectron2 demo evaluation
# with the box-aware mask-logit objective; the speed benchmark of the demo models and of the real-size models
# (DeepLabV3 R50-D8 at 512×512, Mask R-CNN R50-FPN at 800×1333, random weights).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${EQUI_PYTHON:-.venv/bin/python}"

case "${1:-}" in
  "") DRY_RUN=0 ;;
  --dry-run) DRY_RUN=1 ;;
  *) echo "usage: bash tools/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

if [[ $DRY_RUN == 1 ]]; then
  DEVICE=cpu
  OUT="$(mktemp -d)"
  trap 'rm -rf "$OUT"' EXIT
  DEMO=(--num-images 2 --batch-size 2)
  D2=(--num-images 1 --scenarios clean,attacked)
  D2_OPTS=(EQUI.STEPS 1)
  GPU_TESTS=(--collect-only)  # the suite itself runs (and skips) them
  SPEED=(--batch 2 --repeats 1 --attack-steps 1 --presets fast --detector-transforms "" --real-models "")
else
  if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "error: torch finds no CUDA GPU here; 'bash tools/gpu_check.sh --dry-run' checks the steps on the CPU" >&2
    exit 1
  fi
  DEVICE=cuda
  OUT=docs/benchmarks/speed/gpu
  DEMO=()
  D2=()
  D2_OPTS=()
  GPU_TESTS=()
  SPEED=(--real-models mmseg,detectron2 --cityscapes-size)
fi

step() { echo "== gpu_check ($DEVICE): $*"; "$@"; }

step "$PY" -c "from equi_ext.evaluation.demo import ensure_data; print(ensure_data())"
step "$PY" -m pytest -q -m gpu "${GPU_TESTS[@]}" tests
step "$PY" tools/run_demo.py "${DEMO[@]}" --work-dir "$OUT/demo"
step "$PY" tools/test.py configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml "${D2[@]}" \
  --work-dir "$OUT/mask_rcnn_mask_logits" --opts MODEL.DEVICE "$DEVICE" EQUI.FEATURE fpn+mask_logits "${D2_OPTS[@]}"
step "$PY" tools/benchmark_speed.py --device "$DEVICE" "${SPEED[@]}" --work-dir "$OUT"
echo "== gpu_check ($DEVICE): every step passed; the speed page is $OUT/benchmark_speed.md"
