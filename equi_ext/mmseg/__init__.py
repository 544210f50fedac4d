"""MMSegmentation adapter.

Importing it (``custom_imports = dict(imports=['equi_ext.mmseg'])`` in a config, or
automatically through ``tools/test.py``) registers ``SyntheticShapesDataset`` and
``EquiEncoderDecoder``, and makes every ``EncoderDecoder`` honour ``model.test_cfg.defense`` /
``model.test_cfg.attack``.
"""

from ..frameworks import require

# mmcv.ops: mmseg imports the compiled ops at import time, so mmcv-lite is not enough.
require("mmseg", ["mmengine", "mmcv.ops", "mmseg"],
        {"mmsegmentation": ("1.2", "2"), "mmcv": ("2.0.0rc4", "2.2.0"), "mmengine": ("0.10", "1")})

from ..pipeline import SCENARIOS  # noqa: E402
from . import datasets, metrics, transforms  # noqa: E402, F401  (registers SyntheticShapesDataset, PerImageIoUMetric, ImageCorruption)
from .segmentor import (  # noqa: E402
    EquiEncoderDecoder,
    build_equi_components,
    configure,
    install,
    runtime,
    scenario,
)

install()

__all__ = ["SCENARIOS", "EquiEncoderDecoder", "build_equi_components", "configure", "install", "runtime", "scenario"]
