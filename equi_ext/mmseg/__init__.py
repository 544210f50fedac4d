"""MMSegmentation adapter.

Importing it (``custom_imports = dict(imports=['equi_ext.mmseg'])`` in a config, or
automatically through ``tools/test.py``) registers ``SyntheticShapesDataset`` and
``EquiEncoderDecoder``, and makes every ``EncoderDecoder`` honour ``model.test_cfg.defense`` /
``model.test_cfg.attack`` (``equi_ext.mmseg.unpatch()`` gives ``EncoderDecoder`` its stock methods back;
``EquiEncoderDecoder`` keeps them).
"""

from ..frameworks import require

# mmcv.ops: mmseg imports the compiled ops at import time, so mmcv-lite is not enough.
require("mmseg", ["mmengine", "mmcv.ops", "mmseg"],
        {"mmsegmentation": ("1.2", "2"), "mmcv": ("2.0.0rc4", "2.2.0"), "mmengine": ("0.10", "1")})

import mmengine.config.utils as _mmengine_config_utils  # noqa: E402

from ..pipeline import SCENARIOS  # noqa: E402
from . import datasets, hooks, metrics, transforms  # noqa: E402, F401  (registers SyntheticShapesDataset, ImageProgressHook, PerImageIoUMetric, ImageCorruption)
from .segmentor import (  # noqa: E402
    EquiEncoderDecoder,
    build_equi_components,
    configure,
    install,
    runtime,
    scenario,
    unpatch,
)

install()

# ``_base_ = ['equi_ext::demo/...']`` in a config: MMEngine resolves ``scope::`` bases only for the packages in
# its MODULE2PACKAGE table, under the installed package's ``.mim/configs`` (a wheel install; a checkout uses
# relative paths). Registered here, so it holds for configs loaded after this import (equi-ext's tools).
_mmengine_config_utils.MODULE2PACKAGE.setdefault("equi_ext", "equi-ext")

__all__ = ["SCENARIOS", "EquiEncoderDecoder", "build_equi_components", "configure", "install", "runtime", "scenario",
           "unpatch"]
