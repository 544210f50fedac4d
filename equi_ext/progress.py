"""One progress bar per evaluation pass, the same for both adapters.

A pass of MMSeg's test loop or Detectron2's ``inference_on_dataset`` over attacked and defended images
takes minutes on a CPU, and the tools log at WARNING: without a bar a user cannot tell work from a hang.
The bar goes to stderr, counts images and names the pass (a scenario, or an attack / defense cell).
"""

from __future__ import annotations

from tqdm.auto import tqdm


def image_bar(total: int, label: str, *, main_process: bool = True) -> tqdm:
    """A bar over ``total`` images named ``label`` (silent on processes other than the main one)."""
    return tqdm(total=total, desc=label, unit="img", leave=False, dynamic_ncols=True, disable=not main_process)
