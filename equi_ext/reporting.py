"""Writing the tools' results: JSON (+ CSV) with the page and plots rendered from it, and crash-safe records.

Long runs write each finished item with :func:`atomic_write_json` (temp file + rename), so a
run killed at any moment leaves only whole records behind and ``--resume`` can trust them.
"""

from __future__ import annotations

import csv
import datetime
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.validation import SettingsError
from .files import atomic_write_bytes

logger = logging.getLogger(__name__)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, default=_jsonable).encode())


def read_record(path: str | os.PathLike) -> dict:
    """A per-image record written by ``atomic_write_json``; one that is not valid JSON (a file written by other
    means, or damaged) is an error naming it, not a bare ``JSONDecodeError``."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SettingsError(f"per-image record {str(path)!r} is not valid JSON ({err}); delete it (or its folder) "
                            "and run again") from None


#: The settings stamp of a cell's record folder (see ``prepare_record_dir``).
CELL_SETTINGS = ".cell_settings"  # no .json suffix: the folder's *.json are its records


def fingerprint(values: Any) -> str:
    """A short hash of what produced a record: a model's state dict (names, shapes, dtypes, bytes) or any JSON-able
    value (e.g. the list of image paths)."""
    digest = hashlib.sha256()
    if hasattr(values, "state_dict"):
        import torch

        for name, tensor in values.state_dict().items():
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        digest.update(json.dumps(values, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def prepare_record_dir(record_dir: str | os.PathLike, settings: dict, resume: bool) -> None:
    """Stamp a cell's record folder with everything its numbers depend on (attack, defense, model weights, images).

    ``resume`` over records made with other settings would pool two experiments into one number: it is refused,
    naming what differs (as are records with no stamp). A run without ``resume`` removes the folder's old records
    first, so a later resume can only find records of these settings.
    """
    folder = Path(record_dir)
    stamp = folder / CELL_SETTINGS
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    records = [p for p in folder.glob("*.json") if p.name != CELL_SETTINGS] if folder.is_dir() else []
    if resume and stamp.is_file():
        old = read_record(stamp)
        differ = sorted(key for key in settings.keys() | old.keys() if settings.get(key) != old.get(key))
        if differ:
            raise SettingsError(f"cannot resume from {str(folder)!r}: its records were made with other settings "
                                f"({', '.join(differ)} differ); run without --resume to replace them")
    elif resume and records:
        raise SettingsError(f"cannot resume from {str(folder)!r}: its records carry no settings stamp (an older "
                            "equi-ext wrote them); run without --resume to replace them")
    elif not resume:
        for path in records:
            path.unlink()
    atomic_write_json(stamp, settings)


def record_path(record_dir: str | os.PathLike, image_file: str) -> Path:
    """Where an image's per-image record lives: named by the image's file name, not its folder."""
    return Path(record_dir) / f"{os.path.basename(image_file)}.json"


def record_paths(record_dir: str | os.PathLike, image_files: Sequence[str]) -> list[Path]:
    """``record_path`` of each image of a cell. Records and random seeds are keyed by file name (so they do not
    depend on where the data lives): two different images with one file name, e.g. in two folders, would share
    both, and a cell would read one record twice and never the other's, so they are an error naming both."""
    seen: dict[str, str] = {}
    for image in map(str, image_files):
        other = seen.setdefault(os.path.basename(image), image)
        if other != image:
            raise SettingsError(f"images {other!r} and {image!r} have the same file name: equi-ext keys per-image "
                                "records and random seeds by file name; rename one or evaluate them in separate runs")
    return [record_path(record_dir, image) for image in image_files]


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


def provenance(command: str | None = None) -> dict[str, Any]:
    """Where and how a result was measured: the command, the date, the machine, the versions and commit.
    Numbers move across CPU types and thread counts, so a page that shows them says which."""
    import platform

    import torch

    from . import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return dict(command=command, date=datetime.date.today().isoformat(), cpu=cpu, cores=os.cpu_count(),
                cpu_capability=_cpu_capability(torch), torch_threads=torch.get_num_threads(),
                python=platform.python_version(), torch=torch.__version__, equi_ext=__version__,
                commit=source_commit())


def _cpu_capability(torch) -> str:
    """The kernel set torch dispatches to (AVX512, AVX2, DEFAULT …); 'unknown' on a torch without the query."""
    query = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return query() if query else "unknown"


@functools.cache
def source_commit() -> str | None:
    """The git commit of the package's source (``-dirty`` with uncommitted changes to the code: the package,
    the tools, the configs; not the docs); None when installed. Read once per process: a tool reads it at its
    start (:func:`equi_ext.tooling.start_tool`), so a result names the code that measured it."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "equi_ext", "tools", "configs"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def provenance_line(meta: dict[str, Any]) -> str:
    """One Markdown paragraph naming the command, date, machine and versions of a result."""
    parts = [f"Measured {meta['date']}"]
    if meta.get("command"):
        parts.append(f"with `{meta['command']}`")
    parts.append(f"on {meta['cpu']} ({meta['cores']} cores, {meta['cpu_capability']}, "
                 f"{meta['torch_threads']} torch thread{'s' if meta['torch_threads'] != 1 else ''}), "
                 f"Python {meta['python']}, torch {meta['torch']}, equi-ext {meta['equi_ext']}"
                 + (f" at {meta['commit']}" if meta.get("commit") else ""))
    return " ".join(parts) + "."


@dataclass(frozen=True)
class Report:
    """How a tool's result becomes its files: ``markdown`` (the page) and ``plots`` (file name → PNG bytes; a
    name may hold ``{data[key]}``, a field of the result, never the JSON's file name, which the page cannot
    know), each a pure function of the result JSON. The tool writes the JSON beside them, so a committed result
    re-renders (:meth:`rerender`) without measuring again, and a page cannot drift from what was measured."""

    markdown: Callable[[dict], str]
    plots: Mapping[str, Callable[[dict], bytes]] = field(default_factory=dict)

    def page(self, data: dict) -> str:
        text = self.markdown(data).rstrip("\n") + "\n"
        if data.get("provenance"):
            text += "\n" + provenance_line(data["provenance"]) + "\n"
        return text

    def write(self, out_dir: str | Path, stem: str, data: dict, csv_rows: Sequence[dict[str, Any]] | None = None,
              command: str | None = None) -> dict[str, Path]:
        """Write ``stem.json`` (``data`` and its provenance), the page ``stem.md`` rendered from that JSON,
        the plots and, with ``csv_rows``, ``stem.csv`` into ``out_dir``; print the page; return the paths."""
        data = json.loads(json.dumps(dict(data, provenance=provenance(command)), default=_jsonable))
        out = Path(out_dir)
        paths = {"json": out / f"{stem}.json"}
        atomic_write_json(paths["json"], data)
        if csv_rows is not None:
            paths["csv"] = out / f"{stem}.csv"
            atomic_write_bytes(paths["csv"], csv_text(csv_rows).encode())
        paths.update(self._render(paths["json"], data))
        logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
        print(paths["md"].read_text(), end="")
        return paths

    def rerender(self, result_json: str | Path) -> dict:
        """Rewrite the page and plots beside a result JSON the tool wrote earlier; return the result."""
        result_json = Path(result_json)
        try:
            data = json.loads(result_json.read_text())
        except (OSError, ValueError) as err:
            raise SettingsError(f"cannot read the result {result_json}: {err}") from None
        try:
            self._render(result_json, data)
        except (LookupError, TypeError, AttributeError, ValueError, StopIteration) as err:
            raise SettingsError(f"{result_json} is not a result of this tool ({type(err).__name__}: {err})") from None
        logger.info("rendered the page and plots of %s from it; nothing measured", result_json)
        return data

    def _render(self, result_json: Path, data: dict) -> dict[str, Path]:
        files = {"md": (result_json.with_suffix(".md"), self.page(data).encode())}
        files.update({name: (result_json.with_name(name.format(data=data)), plot(data))
                      for name, plot in self.plots.items()})
        for path, content in files.values():
            atomic_write_bytes(path, content)
        return {key: path for key, (path, _) in files.items()}


def slug(label: str) -> str:
    """A row or column label as a file-name part (the per-image record folders of a benchmark cell)."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", label.replace("λ_e", "lambda"))
