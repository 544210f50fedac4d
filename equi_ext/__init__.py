"""equi-ext: test-time robustness by restoring feature equivariance (Mao et al., ICML 2023).

Functional API (plain torch; images are float RGB (N, 3, H, W) in [0, 255], budgets in
pixel levels)::

    out = equi_ext.defend(feature_fn, images, method="equi", eps_v=6)
    score = equi_ext.equivariance_score(feature_fn, images)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily so that e.g. the data generator stays light
    from collections.abc import Sequence

    import torch

    from .core.defense import DefenseOutput
    from .core.losses import FeatureFn

__version__ = "0.2.0.dev0"


def defend(feature_fn: FeatureFn, images: torch.Tensor, method: str | dict = "equi", *,
           model: torch.nn.Module | None = None, image_seeds: Sequence[int] | None = None,
           **kwargs: Any) -> DefenseOutput:
    """Purify ``images`` with the registered defense ``method`` (``'equi'``, ``'invariance'``, …).

    ``kwargs`` are the defense's constructor arguments (``eps_v``, ``steps``, ``preset``, …). ``image_seeds``, one
    int per image (e.g. ``equi_ext.core.seeding.file_seed(path)``), fix each image's random draws whatever batch
    it comes in; without them each image's seed comes from its pixel values, which also makes the result
    independent of the batch (give seeds when two different images must not share draws by chance of equal
    pixels, or to skip hashing the pixels).
    """
    from .defenses import build_defense

    cfg = {"type": method} if isinstance(method, str) else dict(method)
    cfg.update(kwargs)
    return build_defense(cfg)(images, feature_fn, model=model, image_seeds=image_seeds)


def equivariance_score(feature_fn: FeatureFn, images: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Mean cosine of g⁻¹∘F∘g(x) and F(x) over the transforms, per image in [−1, 1] (paper Eq. 2 / K).

    ``kwargs``: ``transforms`` (default: the ``default`` preset's), ``reduction``, ``seed``, ``pixel_range``.
    """
    from .core.defense import equivariance_score as score

    return score(feature_fn, images, **kwargs)


__all__ = ["defend", "equivariance_score", "__version__"]
