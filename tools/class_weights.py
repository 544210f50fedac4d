#!/usr/bin/env python
"""Class weights of SEA's ``balanced_ce`` loss: inverse pixel frequencies of an MMSeg config's training split.

Prints the weights as the attack setting to paste into the config (or ``--cfg-options``) and writes them
with the pixel counts to ``--out`` (JSON). Example::

    python tools/class_weights.py configs/deeplabv3_voc_equi.py --out work_dirs/voc_class_weights.json
    # then: model.test_cfg.attack=dict(type='sea', class_weights=[...])
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from equi_ext.core.validation import SettingsError
from equi_ext.files import atomic_write_text
from equi_ext.tooling import start_tool


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="MMSeg config")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--num-images", type=int, help="count the first N images only")
    parser.add_argument("--data-root", help="replaces the split's data_root")
    parser.add_argument("--out", help="JSON file for the weights and the pixel counts")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from mmengine.config import Config

    import equi_ext.mmseg  # noqa: F401  (registers the datasets equi-ext ships)
    from equi_ext.mmseg.class_weights import inverse_pixel_frequencies

    if not Path(args.config).is_file():
        raise SystemExit(f"error: config file {args.config!r} does not exist")
    try:
        result = inverse_pixel_frequencies(Config.fromfile(args.config), split=args.split,
                                           num_images=args.num_images, data_root=args.data_root)
    except SettingsError as err:
        raise SystemExit(f"error: {err}") from None
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"{result['images']} {args.split} images; pixels per class: "
          + ", ".join(f"{c} {n}" for c, n in zip(result["classes"], result["counts"])))
    print("attack=dict(type='sea', class_weights=[" + ", ".join(f"{w:.6g}" for w in result["weights"]) + "])")
    return result


if __name__ == "__main__":
    start_tool()
    main()
