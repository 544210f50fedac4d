"""Inverse pixel frequencies of a config's training split: the class weights of SEA's ``balanced_ce`` loss.

SEA balances its masked cross-entropy by 1/N_y, N_y being the pixels of class y on the training split, so
that small classes are attacked as hard as large ones. Without these weights ``balanced_ce`` falls back to
each attacked image's own label frequencies (``equi_ext.attacks.apgd.inverse_frequency_weights``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mmengine.config import Config
from mmseg.registry import DATASETS
from tqdm.auto import tqdm

from ..core.validation import SettingsError


def inverse_pixel_frequencies(cfg: Config, *, split: str = "train", num_images: int | None = None,
                              data_root: str | None = None) -> dict[str, Any]:
    """Count the labelled pixels of each class over ``split``'s dataset (``train`` / ``val`` / ``test``
    dataloader of ``cfg``; ``num_images``: the first N; ``data_root`` replaces the config's) and return
    ``weights`` (1/N_y normalised to sum 1; 0 for a class with no pixel), ``counts``, ``classes``, ``images``.

    Raises:
        SettingsError: an unknown split, ``num_images`` < 1, or a split without labelled pixels.
    """
    key = f"{split}_dataloader"
    if split not in ("train", "val", "test") or key not in cfg:
        raise SettingsError(f"split must be one of train, val, test with a {split}_dataloader in the config; "
                            f"got {split!r}")
    if num_images is not None and num_images < 1:
        raise SettingsError(f"num_images must be >= 1; got {num_images}")
    dataset_cfg = cfg[key].dataset.copy()
    dataset_cfg.pipeline = [dict(type="mmseg.LoadAnnotations")]  # the label maps only, as the dataset stores them
    if data_root is not None:
        dataset_cfg.data_root = data_root
    if num_images is not None:
        dataset_cfg.indices = num_images
    dataset = DATASETS.build(dataset_cfg)
    classes = list(dataset.metainfo["classes"])
    ignore_index = int(cfg.model.get("decode_head", {}).get("ignore_index", 255))
    counts = np.zeros(len(classes), dtype=np.int64)
    for i in tqdm(range(len(dataset)), desc="label maps", leave=False):
        labels = np.asarray(dataset[i]["gt_seg_map"]).ravel()
        labels = labels[(labels != ignore_index) & (labels < len(classes))]
        counts += np.bincount(labels, minlength=len(classes))[:len(classes)]
    if not counts.sum():
        raise SettingsError(f"the {split} split has no labelled pixel of any of the {len(classes)} classes")
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    weights = inverse / inverse.sum()
    return dict(weights=[float(w) for w in weights], counts=[int(c) for c in counts], classes=classes,
                images=len(dataset), split=split)
