"""What every tool does first when run as a program (:func:`start_tool`): hide the frameworks' warnings a user
cannot act on and show equi-ext's INFO log, which says what the tool is doing.

Each warning filter names one message the frameworks or torch print on every run (deprecations inside mmseg,
Detectron2 and torch, notes about their own defaults); anything else still shows. Only the tools call this:
the library never changes a user's warning filters or logging.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

from .core.validation import SettingsError

#: (message start, category): every one printed by code outside equi-ext, none about the user's settings.
KNOWN_WARNINGS = (
    ("pkg_resources is deprecated", UserWarning),  # detectron2.model_zoo
    ("``build_loss`` would be deprecated", UserWarning),  # mmseg's own builder
    ("Default ``avg_non_ignore`` is False", UserWarning),  # mmseg's CrossEntropyLoss default
    ("`torch.jit.script` is deprecated", FutureWarning),  # detectron2/fvcore at import
    ("The given NumPy array is not writable", UserWarning),  # detectron2's mask loading
    ("torch.meshgrid: in an upcoming release", UserWarning),  # detectron2's anchors
    ("__array__ implementation doesn't accept a copy keyword", DeprecationWarning),  # pycocotools / numpy 2
    # mmengine, when a second runner in one process builds mmseg's visualizer again (every benchmark cell)
    ("<class 'mmseg.visualization.local_visualizer.SegLocalVisualizer'> instance named of visualizer has been "
     "created", UserWarning),
)


def quiet_known_warnings() -> None:
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=r"\s*" + re.escape(message), category=category)


class _AboveProgressBars(logging.Handler):
    """Writes each record to stderr above any live progress bar (tqdm's write), not through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 — logging must never raise
            self.handleError(record)


def start_tool() -> None:
    """Hide the known warnings and log the ``equi_ext`` loggers at INFO to stderr (timestamped, above the
    progress bars); the frameworks' own loggers keep their levels."""
    quiet_known_warnings()
    from .reporting import source_commit

    source_commit()  # read now, when the measuring process starts: the code that measured, not a later edit
    logger = logging.getLogger("equi_ext")
    if not any(isinstance(h, _AboveProgressBars) for h in logger.handlers):
        handler = _AboveProgressBars()
        handler.setFormatter(logging.Formatter("%(asctime)s equi-ext: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def add_render_option(parser) -> None:
    """``--render RESULT_JSON``: rewrite a result's page and plots from its JSON without measuring."""
    parser.add_argument("--render", metavar="RESULT_JSON",
                        help="only rewrite the page and plots beside a result JSON this tool wrote (e.g. a "
                             "committed one under docs/benchmarks): nothing is measured")


def add_framework_option(parser) -> None:
    """``--framework NAME``: which demo model a benchmark measures (default mmseg), with ``--detectron2`` as
    shorthand for ``--framework detectron2``."""
    from .evaluation.backends import BACKENDS

    models = "; ".join(f"{name}: the {backend.model_name} ({backend.metric})" for name, backend in BACKENDS.items())
    parser.add_argument("--framework", choices=list(BACKENDS), default="mmseg", help=f"the model measured: {models}")
    parser.add_argument("--detectron2", dest="framework", action="store_const", const="detectron2",
                        help="shorthand for --framework detectron2")


def measure_or_render(measure: Callable[[], Any], report=None, render: str | None = None) -> Any:
    """A tool's body: with ``render`` (its ``--render RESULT_JSON``) rewrite that result's page and plots through
    ``report`` and measure nothing, else call ``measure``; a bad setting ends the program with its message."""
    try:
        return report.rerender(render) if render else measure()
    except SettingsError as err:
        raise SystemExit(f"error: {err}") from None


def command_line(tool: str, argv) -> str:
    """The command that ran ``tool`` (its file name under tools/), for a result's provenance."""
    import shlex

    return shlex.join(["python", f"tools/{tool}", *(sys.argv[1:] if argv is None else argv)])
