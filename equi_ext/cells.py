"""A benchmark cell, the same in both frameworks: one attack × one defense over a fixed list of images, with one
record per image written as it finishes, so a killed cell resumes and reports what an uninterrupted one would.

The framework adapters (``equi_ext.mmseg.evaluation``, ``equi_ext.detectron2.evaluation``) supply only how to run
some of the images and how to score a pool of records with their evaluator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from .reporting import prepare_record_dir, read_record, record_paths


def run_cell(attack: tuple[str, Any], defense: tuple[str, Any], images: Sequence[str], record_dir: str | os.PathLike,
             *, stamp: dict, resume: bool, run_images: Callable[[list[int]], None],
             score: Callable[[list[dict]], dict], read: Callable[[os.PathLike], dict] = read_record) -> dict:
    """The row of the cell (label, config) ``attack`` × ``defense`` on ``images``.

    ``stamp`` is what else the numbers depend on (model, data, corruption …; ``prepare_record_dir``);
    ``run_images(indices)`` evaluates those images, writing their records to ``record_dir``; with ``resume`` the
    images that have a record are not run again. ``score(records)`` gives the row's metrics over the records of all
    the images, read back with ``read``. Returns ``attack``, ``defense``, the metrics, ``images``, ``per_image``,
    ``run_images`` and ``seconds``.
    """
    paths = record_paths(record_dir, images)
    prepare_record_dir(record_dir, dict(attack=attack[1], defense=defense[1], **stamp), resume)
    todo = [i for i, path in enumerate(paths) if not (resume and path.is_file())]
    row = dict(attack=attack[0], defense=defense[0], seconds=0.0, run_images=len(todo))
    if todo:
        start = time.perf_counter()
        run_images(todo)
        row["seconds"] = time.perf_counter() - start
    records = [read(path) for path in paths]
    row.update(score(records), images=len(records), per_image=records)
    return row


def runs_of(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """The per-image records of cell rows, by ``'attack / defense'`` label: what a per-image worst case picks from."""
    return {f"{r['attack']} / {r['defense']}": r["per_image"] for r in rows}
