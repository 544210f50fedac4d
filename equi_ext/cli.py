"""``equi-ext TOOL [ARGS]`` (or ``python -m equi_ext TOOL [ARGS]``): run a shipped tool from any install.

The tools are the files in ``tools/`` of the repository, shipped in the wheel under ``equi_ext/.mim/tools``;
``equi-ext test equi_ext::deeplabv3_voc_equi.py CHECKPOINT`` is ``python tools/test.py
configs/deeplabv3_voc_equi.py CHECKPOINT`` in a clone.
"""

from __future__ import annotations

import ast
import runpy
import sys

from . import __version__
from .assets import ASSETS, WORKSPACE, tools
from .core.registry import did_you_mean


def _summary(path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.splitlines()[0] if doc else ""


def usage() -> str:
    found = tools()
    width = max(map(len, found))
    lines = ["usage: equi-ext TOOL [ARGS ...]   (equi-ext TOOL --help for a tool's options)", "", "tools:"]
    lines += [f"  {name:<{width}}  {_summary(path)}" for name, path in found.items()]
    lines += ["", f"configs: equi_ext::NAME names {ASSETS / 'configs'}/NAME", f"work dirs and data go under {WORKSPACE}",
              f"equi-ext {__version__}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] == "--version":
        print(f"equi-ext {__version__}")
        return
    found = tools()
    name = argv[0].removesuffix(".py")
    if name not in found:
        raise SystemExit(f"error: unknown tool {argv[0]!r}{did_you_mean(name, found)}; run 'equi-ext --help' for the list")
    sys.argv = [str(found[name]), *argv[1:]]
    runpy.run_path(str(found[name]), run_name="__main__")
