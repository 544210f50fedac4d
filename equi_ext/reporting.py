"""Writing the tools' results: Markdown + JSON (+ CSV) reports and crash-safe per-item records.

Long runs write each finished item with :func:`atomic_write_json` (temp file + rename), so a
run killed at any moment leaves only whole records behind and ``--resume`` can trust them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide reports from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, default=_jsonable).encode())


def record_path(record_dir: str | os.PathLike, image_file: str) -> Path:
    """Where an image's per-image record lives: named by the image's file name, not its folder."""
    return Path(record_dir) / f"{os.path.basename(image_file)}.json"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # tensors and numpy arrays
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """CSV of a list of flat dicts; columns in first-seen order, floats with 4 decimals."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_report(out_dir: str | Path, stem: str, text: str, data: Any,
                 csv_rows: Sequence[dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write ``stem.md`` (``text``), ``stem.json`` (``data``) and, with ``csv_rows``, ``stem.csv``
    into ``out_dir``; print ``text``; return the paths written."""
    out = Path(out_dir)
    paths = {"md": out / f"{stem}.md", "json": out / f"{stem}.json"}
    atomic_write_bytes(paths["md"], text.encode())
    atomic_write_json(paths["json"], data)
    if csv_rows is not None:
        paths["csv"] = out / f"{stem}.csv"
        atomic_write_bytes(paths["csv"], csv_text(csv_rows).encode())
    print(text)
    return paths


def slug(label: str) -> str:
    """A row or column label as a file-name part (the per-image record folders of a benchmark cell)."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", label.replace("λ_e", "lambda"))
