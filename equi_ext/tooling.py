"""What every tool does first when run as a program: hide the frameworks' warnings a user cannot act on.

Each filter names one message the frameworks or torch print on every run (deprecations inside mmseg,
Detectron2 and torch, notes about their own defaults); anything else still shows. Only the tools call this:
the library never changes a user's warning filters.
"""

from __future__ import annotations

import re
import warnings

#: (message start, category): every one printed by code outside equi-ext, none about the user's settings.
KNOWN_WARNINGS = (
    ("pkg_resources is deprecated", UserWarning),  # detectron2.model_zoo
    ("``build_loss`` would be deprecated", UserWarning),  # mmseg's own builder
    ("Default ``avg_non_ignore`` is False", UserWarning),  # mmseg's CrossEntropyLoss default
    ("`torch.jit.script` is deprecated", FutureWarning),  # detectron2/fvcore at import
    ("The given NumPy array is not writable", UserWarning),  # detectron2's mask loading
    ("torch.meshgrid: in an upcoming release", UserWarning),  # detectron2's anchors
    ("__array__ implementation doesn't accept a copy keyword", DeprecationWarning),  # pycocotools / numpy 2
)


def quiet_known_warnings() -> None:
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=r"\s*" + re.escape(message), category=category)
