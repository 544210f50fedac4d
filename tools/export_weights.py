#!/usr/bin/env python
"""Strip a training checkpoint to its weights (no optimizer state), optionally as fp16.

Handles MMEngine checkpoints (``state_dict``) and Detectron2 ones (``model``); the output keeps
the framework's key, so each framework's loader reads it. Examples::

    python tools/export_weights.py work_dirs/demo_train/iter_3000.pth \
        checkpoints/deeplabv3_r18c16-d8_synthetic-128x128.pth
    python tools/export_weights.py work_dirs/mask_rcnn_R18_FPN_synthetic-128x128/model_final.pth \
        checkpoints/mask_rcnn_R18_FPN_synthetic-128x128.pth --fp16
"""

from __future__ import annotations

import argparse
from pathlib import Path

from equi_ext.core.checkpoints import CheckpointError, read_checkpoint
from equi_ext.files import atomic_torch_save
from equi_ext.tooling import start_tool


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--fp16", action="store_true", help="store floating-point tensors as float16")
    parser.add_argument("--trust-source", action="store_true",
                        help="unpickle SRC whatever Python objects it names (this runs code the file chooses): only "
                             "for a file you made or trust; the output holds tensors only")
    args = parser.parse_args(argv)
    try:
        ckpt = read_checkpoint(args.src, trust=args.trust_source)
    except (FileNotFoundError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    key = "model" if "model" in ckpt else "state_dict"
    state = ckpt.get(key, ckpt)
    if args.fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    if key == "model":  # Detectron2: iteration only, no optimizer/scheduler state
        out = {"model": state, "iteration": ckpt.get("iteration")}
    else:
        meta = {k: v for k, v in ckpt.get("meta", {}).items() if k in ("iter", "epoch", "seed", "mmseg_version")}
        out = {"state_dict": state, "meta": meta}
    atomic_torch_save(out, args.dst)
    print(f"wrote {args.dst} ({args.dst.stat().st_size / 1e6:.1f} MB, {len(state)} tensors)")


if __name__ == "__main__":
    start_tool()
    main()
