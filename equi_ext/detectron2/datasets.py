"""Detectron2 registration of the synthetic-shapes benchmark."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from equi_ext.data.synthetic import CLASSES, PALETTE, SPLITS, split_paths

logger = logging.getLogger(__name__)


def register_synthetic_shapes(root: str | os.PathLike, prefix: str = "synthetic_shapes") -> list[str]:
    """Register every split of a generated data set as a COCO instances data set.

    Registration goes through Detectron2's own ``register_coco_instances`` so
    that the records (RLE masks of the visible shape parts) and the evaluator
    type are exactly those of a COCO data set. Detectron2's catalogs are
    process-global, so calling this twice for the same files is a no-op,
    whereas reusing a name for *different* files is refused instead of
    silently serving the old data.

    Args:
        root: Root written by :func:`equi_ext.data.synthetic.generate_dataset`.
        prefix: Data set names are ``f"{prefix}_{split}"``.

    Returns:
        The names of the registered (or already identically registered) splits,
        in split order.

    Raises:
        TypeError: If ``prefix`` is not a str.
        ValueError: If ``prefix`` is empty, or a name is already registered for
            other files.
        FileNotFoundError: If ``root`` holds no split.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str; got {type(prefix).__name__}")
    if not prefix:
        raise ValueError("prefix must be a non-empty str; got ''")
    root_path = Path(root).resolve()
    names: list[str] = []
    for split in SPLITS:
        paths = split_paths(root_path, split)
        if not (paths["coco_json"].is_file() and paths["img_dir"].is_dir()):
            continue
        name = f"{prefix}_{split}"
        json_file, image_root = str(paths["coco_json"]), str(paths["img_dir"])
        if name in DatasetCatalog.list() or name in MetadataCatalog.list():
            meta = MetadataCatalog.get(name)
            registered = (meta.get("json_file"), meta.get("image_root"))
            if name not in DatasetCatalog.list() or registered != (json_file, image_root):
                raise ValueError(
                    f"dataset name {name!r} is already registered for json_file={registered[0]!r}, "
                    f"image_root={registered[1]!r}; choose another prefix than {prefix!r}"
                )
            logger.debug("%s already registered for %s", name, json_file)
        else:
            register_coco_instances(
                name,
                {"thing_classes": list(CLASSES[1:]), "thing_colors": [list(c) for c in PALETTE[1:]]},
                json_file,
                image_root,
            )
            logger.info("registered %s (%s)", name, json_file)
        names.append(name)
    if not names:
        raise FileNotFoundError(
            f"no synthetic-shapes split (annotations/instances_<split>.json) under {str(root_path)!r}"
        )
    return names


def register_from_cfg(cfg) -> list[str]:
    """Register ``cfg.EQUI.SYNTHETIC_ROOT`` (if set) under the prefix its dataset names use.

    The prefix is taken from ``DATASETS.TRAIN``/``TEST`` names ending in ``_train``/``_val``,
    so a config naming ``synthetic_shapes_val`` gets exactly that name registered.
    """
    root = cfg.EQUI.SYNTHETIC_ROOT
    if not root:
        return []
    if not Path(root).is_dir():
        raise FileNotFoundError(
            f"EQUI.SYNTHETIC_ROOT {root!r} does not exist; generate it with "
            f"`python tools/generate_data.py --out {root}`"
        )
    prefixes = {name.rsplit("_", 1)[0] for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)
                if name.rsplit("_", 1)[-1] in SPLITS}
    names: list[str] = []
    for prefix in sorted(prefixes) or ["synthetic_shapes"]:
        names += register_synthetic_shapes(root, prefix=prefix)
    return names
