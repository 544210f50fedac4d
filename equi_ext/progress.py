"""One progress bar per evaluation pass, the same for both adapters.

A pass of MMSeg's test loop or Detectron2's ``inference_on_dataset`` over attacked and defended images
takes minutes on a CPU, and the tools log at WARNING: without a bar a user cannot tell work from a hang.
The bar goes to stderr, counts images and names the pass (a scenario, or an attack / defense cell). A batch
attacked through the defense can take a minute, so the attacks report each step on the open bar
(``note_step``): the bar moves at least once per attack step, not only once per batch.
"""

from __future__ import annotations

from tqdm.auto import tqdm

_OPEN: list[tqdm] = []


class ImageBar(tqdm):
    """A bar over images that ``note_step`` can annotate while it is open."""

    def close(self) -> None:
        if self in (_OPEN or ()):  # None when tqdm closes a leftover bar at interpreter exit
            _OPEN.remove(self)
        super().close()


def image_bar(total: int, label: str, *, main_process: bool = True) -> tqdm:
    """A bar over ``total`` images named ``label`` (silent on processes other than the main one)."""
    bar = ImageBar(total=total, desc=label, unit="img", leave=False, dynamic_ncols=True, disable=not main_process)
    _OPEN.append(bar)
    return bar


def note_step(what: str, step: int, steps: int) -> None:
    """Show step ``step`` (0-based) of ``steps`` of ``what`` on the innermost open image bar, if any."""
    if _OPEN:
        _OPEN[-1].set_postfix_str(f"{what} step {step + 1}/{steps}", refresh=True)
