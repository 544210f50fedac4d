"""MMSeg pipeline transforms provided by equi-ext."""

from __future__ import annotations

from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from ..core.seeding import file_seed
from ..data.corruptions import check_corruptions, corrupt


@TRANSFORMS.register_module()
class ImageCorruption(BaseTransform):
    """Apply one of the 15 common corruptions (``equi_ext.data.corruptions``) to ``results['img']``.

    Put it right after ``LoadImageFromFile``. Each image's randomness is seeded by its file
    name (not its folder, nor its position in the loader), so a corrupted benchmark is the
    same on every machine, batch size and resumed run.

    Example::

        dict(type='ImageCorruption', corruption='fog', severity=3)
    """

    def __init__(self, corruption: str, severity: int = 3) -> None:
        check_corruptions([corruption], [severity])
        self.corruption, self.severity = corruption, severity

    def transform(self, results: dict) -> dict:
        img = results["img"]
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"ImageCorruption needs a 3-channel image; got shape {img.shape}")
        results["img"] = corrupt(img, self.corruption, self.severity, file_seed(results.get("img_path", "")),
                                 bgr=True)  # mmcv loads BGR
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(corruption={self.corruption!r}, severity={self.severity})"
