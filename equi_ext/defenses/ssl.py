"""The self-supervised baselines of paper Table 2: ``rotation`` and ``contrastive``.

Each restores a self-supervised signal of a head trained on the frozen model's features
(``tools/train_ssl_head.py``) with the equivariance defense's own optimiser — SGLD steps,
per-image gradient normalisation, the ε_v ball and the pixel range — so the baselines
differ from ``equi`` only in their objective, as in the paper.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ..core.defense import EquivarianceDefense
from ..core.losses import FeatureFn, Objective, transformed_features
from ..core.ssl import SSLHead, info_nce_terms, load_head
from ..core.transforms import Rot90, Transform
from ..core.validation import PixelRange
from .registry import DEFENSES


class SSLDefense(EquivarianceDefense):
    """Base of the SSL baselines: loads the head and evaluates it on F(x') and F(g_i(x')).

    ``features`` may be a dense feature_fn or a callable :class:`Objective` (Detectron2's
    view, which returns the FPN maps when called); the head reads those dense maps.
    The objective computes every copy's graph at once, so ``chunked`` is not supported.
    """

    objective = ""  # set by subclasses: the head kind

    def __init__(self, *, head: str | os.PathLike | SSLHead | None = None, chunked: bool = False, **settings: Any) -> None:
        if chunked:
            raise ValueError(f"the {self.objective} defense does not support chunked=True: its objective "
                             "differentiates all views of an image together")
        super().__init__(**settings)
        if isinstance(head, SSLHead):
            if head.kind != self.objective:
                raise ValueError(f"the {self.objective!r} defense needs a {self.objective!r} head; got a "
                                 f"{head.kind!r} head")
            self.head = head.eval().requires_grad_(False)
        elif head is None or isinstance(head, (str, os.PathLike)):
            if head is None or not str(head):
                raise ValueError(f"the {self.objective!r} defense needs head=PATH, a head checkpoint written by "
                                 f"tools/train_ssl_head.py (Detectron2: EQUI.SSL_HEAD); got {head!r}")
            self.head = load_head(head, kind=self.objective)
        else:
            raise TypeError(f"head must be a path or an SSLHead; got {type(head).__name__}")

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, head={self.head.source})"

    def _terms(self, feature_fn: FeatureFn | Objective, images: torch.Tensor,
               transforms: Sequence[Transform]) -> torch.Tensor:
        if not callable(feature_fn):
            raise TypeError(f"the {self.objective} defense needs dense feature maps; "
                            f"{type(feature_fn).__name__} is not callable as a feature_fn")
        self.head.to(images.device)
        base, outputs = transformed_features(feature_fn, images, transforms, self.pixel_range)
        return self._head_terms(base, outputs, transforms)

    def _head_terms(self, base: list[torch.Tensor], outputs: list[list[torch.Tensor]],
                    transforms: Sequence[Transform]) -> torch.Tensor:
        raise NotImplementedError


@DEFENSES.register("rotation")
class RotationDefense(SSLDefense):
    """Maximise Σ_k log p(k | F(rot_k x')) of a rotation-prediction head (Shi et al. 2020).

    The views are x' itself (k = 0) and its 3 quarter turns, whatever the preset's
    transforms; ``transforms_per_step`` subsets the turns (x' is always used). Terms and
    the returned score are log-probabilities (≤ 0), not cosines.

    Args:
        head: path of a ``rotation`` head (``tools/train_ssl_head.py --kind rotation``).
        Others: as :class:`~equi_ext.core.defense.EquivarianceDefense`.
    """

    objective = "rotation"

    def __init__(self, *, head: str | os.PathLike | SSLHead | None = None, preset: str = "default", steps: int | None = None,
                 eps_v: float | None = None, step_size: float | None = None, optimizer: str = "sgld",
                 seed: int = 0, pixel_range: PixelRange | None = None, min_size: int = 8,
                 transforms_per_step: int | str | None = None, chunked: bool = False) -> None:
        super().__init__(head=head, chunked=chunked, preset=preset, transforms=[Rot90(k) for k in (1, 2, 3)],
                         steps=steps, eps_v=eps_v, step_size=step_size, optimizer=optimizer, resample="fixed",
                         seed=seed, pixel_range=pixel_range, min_size=min_size,
                         transforms_per_step=transforms_per_step)

    def _head_terms(self, base, outputs, transforms):
        columns = [self.head(base).log_softmax(dim=1)[:, 0]]
        columns += [self.head(maps).log_softmax(dim=1)[:, t.k] for t, maps in zip(transforms, outputs)]
        return torch.stack(columns, dim=1)


@DEFENSES.register("contrastive")
class ContrastiveDefense(SSLDefense):
    """Maximise the InfoNCE agreement of x' with its views g_i(x') against a bank of clean
    training embeddings (SimCLR-style, Mao et al. 2021): terms are log p(positive) (≤ 0).

    Args:
        head: path of a ``contrastive`` head (``tools/train_ssl_head.py --kind contrastive``).
        transforms: the views (default: the preset's transforms, within the head's training views).
        Others: as :class:`~equi_ext.core.defense.EquivarianceDefense`.
    """

    objective = "contrastive"

    def __init__(self, *, head: str | os.PathLike | SSLHead | None = None, preset: str = "default",
                 transforms: str | list[Any] | None = None, steps: int | None = None, eps_v: float | None = None,
                 step_size: float | None = None, optimizer: str = "sgld", resample: str | None = None,
                 seed: int = 0, pixel_range: PixelRange | None = None, min_size: int = 8,
                 transforms_per_step: int | str | None = None, chunked: bool = False) -> None:
        super().__init__(head=head, chunked=chunked, preset=preset, transforms=transforms, steps=steps, eps_v=eps_v,
                         step_size=step_size, optimizer=optimizer, resample=resample, seed=seed,
                         pixel_range=pixel_range, min_size=min_size, transforms_per_step=transforms_per_step)
        if self.head.bank.shape[0] == 0:
            raise ValueError(f"contrastive head {self.head.source} has no bank of clean embeddings (negatives)")

    def _head_terms(self, base, outputs, transforms):
        views = torch.stack([self.head(maps) for maps in outputs], dim=1)
        return info_nce_terms(self.head(base), views, self.head.bank, self.head.temperature)
