"""The 15 common corruptions of Hendrycks & Dietterich (``imagecorruptions``), seeded per image.

``imagecorruptions`` 1.1.2 predates NumPy 2 and scikit-image 0.19+: ``glass_blur`` calls
``gaussian(..., multichannel=True)`` (now ``channel_axis=-1``), ``fog`` allocates with
``np.float_`` (removed in NumPy 2), and ``impulse_noise`` calls ``random_noise``, which since
scikit-image 0.19 draws from fresh entropy instead of NumPy's global RNG (so seeding did not
reach it). :func:`corrupt` patches those names in the package's own module namespace —
nothing global — and otherwise uses the package as it is.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Sequence

import numpy as np

from ..core.validation import SettingsError

#: The 15 benchmark corruptions (noise, blur, weather, digital), in the package's order
#: (``imagecorruptions.get_corruption_names("common")``; a test keeps the two equal). Listed here so that
#: names can be validated without importing the package, which is an optional (``[bench]``) dependency.
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)


def _gaussian_compat(image, *args, multichannel=None, **kwargs):
    """scikit-image's ``gaussian`` accepting the removed ``multichannel`` flag."""
    from skimage.filters import gaussian

    if multichannel is not None:
        kwargs.setdefault("channel_axis", -1 if multichannel else None)
    return gaussian(image, *args, **kwargs)


def _random_noise_from_global_rng(image, *args, rng=None, **kwargs):
    """scikit-image's ``random_noise`` drawing its generator's seed from NumPy's global RNG, which
    :func:`corrupt` seeds, as the package expected when it was written."""
    from skimage.util import random_noise

    return random_noise(image, *args, rng=np.random.randint(2**31) if rng is None else rng, **kwargs)


def _package():
    """Import ``imagecorruptions`` (with the NumPy 2 / scikit-image shim) on first use."""
    try:
        with warnings.catch_warnings():  # the package imports pkg_resources, deprecated by setuptools
            warnings.simplefilter("ignore", UserWarning)
            import imagecorruptions
            from imagecorruptions import corruptions as _corruptions
    except ImportError as error:
        raise ImportError("corruptions need the imagecorruptions package: pip install 'equi-ext[bench]'") from error
    if getattr(_corruptions, "_equi_shim", False):
        return imagecorruptions
    numpy_compat = types.ModuleType("numpy_compat", "numpy plus the float_ alias imagecorruptions uses")
    numpy_compat.__dict__.update(np.__dict__)
    numpy_compat.float_ = np.float64
    _corruptions.np = numpy_compat
    _corruptions.gaussian = _gaussian_compat
    _corruptions.sk = types.SimpleNamespace(color=_corruptions.sk.color,
                                            util=types.SimpleNamespace(random_noise=_random_noise_from_global_rng))
    _corruptions._equi_shim = True
    return imagecorruptions


def check_corruptions(names: Sequence[str], severities: Sequence[int]) -> None:
    """The corruptions and severities a benchmark is asked for, checked before it runs anything: at least one
    of each, known names, severities in 1–5, each once (a repeat would count twice in a mean)."""
    if not names:
        raise SettingsError(f"name at least one corruption: {', '.join(CORRUPTIONS)}")
    unknown = [c for c in names if c not in CORRUPTIONS]
    if unknown:
        raise SettingsError(f"unknown corruption(s) {unknown!r}; valid names: {', '.join(CORRUPTIONS)}")
    if not severities or any(s not in SEVERITIES for s in severities):
        raise SettingsError(f"severities must be among {', '.join(map(str, SEVERITIES))}; got {list(severities)!r}")
    for what, values in (("corruption", names), ("severity", severities)):
        if len(set(values)) < len(values):
            raise SettingsError(f"each {what} once, please; got {list(values)!r}")


def corrupt(image: np.ndarray, name: str, severity: int = 3, seed: int = 0, bgr: bool = False) -> np.ndarray:
    """Corrupt an (H, W, 3) uint8 RGB image (``bgr``: BGR in and out, as OpenCV-based loaders hold it); the
    package's global NumPy RNG is seeded with ``seed`` for the call and restored afterwards, so results depend
    only on (image, seed)."""
    check_corruptions([name], [severity])
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"corrupt() takes an (H, W, 3) uint8 image; got {type(image).__name__} "
                         f"{getattr(image, 'dtype', '')} {shape}")
    if min(image.shape[:2]) < 32:
        raise ValueError(f"corruptions need images of at least 32x32 pixels; got {image.shape[0]}x{image.shape[1]}")
    if bgr:
        return np.ascontiguousarray(corrupt(np.ascontiguousarray(image[..., ::-1]), name, severity, seed)[..., ::-1])
    package = _package()
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return package.corrupt(image, severity=severity, corruption_name=name)
    finally:
        np.random.set_state(state)
