"""A benchmark cell, the same in both frameworks: one attack × one defense over a fixed list of images, with one
record per image written as it finishes, so a killed cell resumes and reports what an uninterrupted one would.

The framework adapters (``equi_ext.mmseg.evaluation``, ``equi_ext.detectron2.evaluation``) supply only how to run
some of the images and how to score a pool of records with their evaluator.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .reporting import prepare_record_dir, read_record, record_paths


class Cell(NamedTuple):
    """One side of a benchmark cell: a row's attack or a column's defense, as its table label and its registry
    config (None: no attack / no defense). A plain ``(label, cfg)`` tuple is taken too."""

    label: str
    cfg: dict | None


def run_cell(attack: Cell, defense: Cell, images: Sequence[str], record_dir: str | os.PathLike,
             *, stamp: dict, resume: bool, run_images: Callable[[list[int]], float],
             score: Callable[[list[dict]], dict], read: Callable[[os.PathLike], dict] = read_record) -> dict:
    """The row of the cell ``attack`` × ``defense`` on ``images``.

    ``stamp`` is what else the numbers depend on (model, data, corruption …; ``prepare_record_dir``);
    ``run_images(indices)`` evaluates those images, writing their records to ``record_dir``, and returns the seconds
    its inference took (the row's ``seconds``; 0 when every image has a record); with ``resume`` the
    images that have a record are not run again. ``score(records)`` gives the row's metrics over the records of all
    the images, read back with ``read``. Returns ``attack``, ``defense``, the metrics, ``images``, ``per_image``,
    ``run_images`` and ``seconds``.
    """
    attack, defense = Cell(*attack), Cell(*defense)
    paths = record_paths(record_dir, images)
    prepare_record_dir(record_dir, dict(attack=attack.cfg, defense=defense.cfg, **stamp), resume)
    todo = [i for i, path in enumerate(paths) if not (resume and path.is_file())]
    row = dict(attack=attack.label, defense=defense.label, seconds=0.0, run_images=len(todo))
    if todo:
        row["seconds"] = run_images(todo)
    records = [read(path) for path in paths]
    row.update(score(records), images=len(records), per_image=records)
    return row


def runs_of(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """The per-image records of cell rows, by ``'attack / defense'`` label: what a per-image worst case picks from."""
    return {f"{r['attack']} / {r['defense']}": r["per_image"] for r in rows}
