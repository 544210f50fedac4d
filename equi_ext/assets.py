"""Where the package's files live, in a checkout and in an installed wheel alike.

``ASSETS`` holds what the package ships read-only, in the OpenMMLab layout (``equi_ext/.mim``): ``configs/``,
``tools/`` and the small demo checkpoints. In a checkout its entries are links to the top-level folders; a
wheel carries copies. ``WORKSPACE`` is where generated data, work dirs and the demo Mask R-CNN checkpoint
(too large for the wheel) go: the checkout when running from one, else the current directory.

A config is named by path or as ``equi_ext::RELATIVE`` (relative to ``ASSETS/configs``, as MMEngine names
``mmseg::`` configs), so the same command works from a clone and from ``pip install equi-ext``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .core.registry import did_you_mean

PACKAGE = Path(__file__).resolve().parent
ASSETS = PACKAGE / ".mim"
_CHECKOUT = PACKAGE.parent
#: A checkout has the package's sources beside setup.py; an installed package sits in site-packages.
IN_CHECKOUT = (_CHECKOUT / "setup.py").is_file() and (_CHECKOUT / "configs").is_dir()
WORKSPACE = _CHECKOUT if IN_CHECKOUT else Path.cwd()
SCOPE = "equi_ext::"


def config_path(name: str | os.PathLike) -> str:
    """``name`` itself, or for ``equi_ext::RELATIVE`` the shipped config it names.

    Raises:
        FileNotFoundError: ``equi_ext::`` names no shipped config (the message lists near misses).
    """
    name = str(name)
    if not name.startswith(SCOPE):
        return name
    relative = name[len(SCOPE):]
    path = ASSETS / "configs" / relative
    if not path.is_file():
        shipped = sorted(str(p.relative_to(ASSETS / "configs")) for p in (ASSETS / "configs").rglob("*")
                         if p.suffix in (".py", ".yaml") and "_base_" not in p.parts)
        raise FileNotFoundError(f"{name!r} names no config shipped with equi-ext{did_you_mean(relative, shipped)}; "
                                f"shipped: {', '.join(shipped)}")
    return str(path)


def tools() -> dict[str, Path]:
    """The shipped command-line tools by name (``test``, ``run_demo``, ...)."""
    return {path.stem: path for path in sorted((ASSETS / "tools").glob("*.py"))
            if path.stem != "patch_detectron2_sdist"}
