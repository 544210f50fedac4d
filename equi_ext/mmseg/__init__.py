"""MMSegmentation adapter.

Importing it (``custom_imports = dict(imports=['equi_ext.mmseg'])`` in a config, or
automatically through ``tools/test.py``) registers ``SyntheticShapesDataset`` and makes
every ``EncoderDecoder`` honour ``model.test_cfg.defense`` / ``model.test_cfg.attack``.
"""

from . import datasets, metrics, transforms  # noqa: F401  (registers SyntheticShapesDataset, PerImageIoUMetric, ImageCorruption)
from .segmentor import SCENARIOS, build_equi_components, configure, install, runtime, set_scenario

install()

__all__ = ["SCENARIOS", "build_equi_components", "configure", "install", "runtime", "set_scenario"]
