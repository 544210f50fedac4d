"""Checks that an adapter's framework is installed and in a supported range, naming what to install if not.

The core needs torch only; each adapter needs its framework, installed through an extra and
``tools/install.sh`` (neither framework's compiled part comes from a plain ``pip install``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re

INSTALL_HINT = {
    "mmseg": "bash tools/install.sh (or pip install 'equi-ext[mmseg]' with the mmcv 2.1.0 ops wheel that "
             "tools/install.sh builds from mmcv's PyPI sdist)",
    "detectron2": "bash tools/install.sh (or pip install 'equi-ext[detectron2]' plus detectron2 itself, which "
                  "tools/install.sh builds from PyPI's pb1-detectron2==0.6 sdist)",
}


def _release(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: '2.0.0rc4' -> (2, 0, 0), '0.10.7' -> (0, 10, 7)."""
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    return tuple(parts)


def require(extra: str, modules: list[str], versions: dict[str, tuple[str, str]]) -> None:
    """Import ``modules`` and check ``versions`` (distribution -> [low, high)); raise ImportError naming the
    missing piece and how to install it."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ImportError(f"equi_ext.{extra} needs {name!r}, which does not import ({error}); "
                              f"install it with: {INSTALL_HINT[extra]}") from error
    for dist, (low, high) in versions.items():
        try:
            found = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue  # importable from a source tree without metadata: trust the import above
        if not _release(low) <= _release(found) < _release(high):
            raise ImportError(f"equi_ext.{extra} supports {dist} >= {low}, < {high}; found {found}. "
                              f"Install a supported version with: {INSTALL_HINT[extra]}")
