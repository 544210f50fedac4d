"""Self-supervised heads for the paper's "Rotation" and "Contrastive" baselines (Table 2).

Both baselines restore a self-supervised signal at test time instead of equivariance:

* ``rotation`` (Shi et al. 2020): a head predicts which of the 4 quarter turns was applied
  to an image; the defense raises log p(k | F(rot_k x')) summed over k.
* ``contrastive`` (Mao et al. 2021, SimCLR-style): a projection head embeds views of an
  image; the defense raises the InfoNCE log-probability that views of x' agree with x'
  rather than with a bank of clean training embeddings (so a batch may be one image).

A head reads the model's dense feature view (one map or a list, e.g. FPN levels), pools
each map globally (so rot90 of a non-square image, or a resized view, is fine) and
concatenates the pooled vectors. The model stays frozen: training only ever sees pooled
features, so they are computed once per image and view (:func:`pooled_views`).

Convention: images are float RGB (N, 3, H, W) in ``pixel_range`` as everywhere in the core.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..files import atomic_torch_save
from .losses import FeatureFn, Maps
from .transforms import ColorJitter, HFlip, Resize, Rot90, Transform
from .validation import DEFAULT_PIXEL_RANGE, PixelRange, check_positive_int

logger = logging.getLogger(__name__)

KINDS = ("rotation", "contrastive")
FILE_FORMAT = "equi_ext.ssl_head"
FILE_VERSION = 1
ROTATIONS = [Rot90(k) for k in range(4)]
#: Training views of the contrastive head: a random flip, a rescale spanning the defense's
#: resizes (0.5–2×) and a colour jitter, each drawn per batch.
VIEW_FAMILY = [Resize((0.5, 2.0)), ColorJitter((0.6, 1.4), (0.6, 1.4), (0.6, 1.4))]


def _as_levels(maps: Maps) -> list[torch.Tensor]:
    levels = list(maps) if isinstance(maps, (list, tuple)) else [maps]
    if not levels or any(not isinstance(m, torch.Tensor) or m.dim() != 4 for m in levels):
        got = [tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__ for m in levels]
        raise ValueError(f"features must be a dense (N, C, h, w) tensor or a non-empty list of them; got {got}")
    return levels


def pool_features(maps: Maps) -> torch.Tensor:
    """Global average of each map, concatenated over maps → (N, ΣC)."""
    return torch.cat([m.mean(dim=(2, 3)) for m in _as_levels(maps)], dim=1)


class SSLHead(nn.Module):
    """Pooled features → LayerNorm → MLP: 4 rotation logits, or a unit-norm embedding.

    Args:
        kind: ``'rotation'`` or ``'contrastive'``.
        in_channels: channels of each feature map the head reads, in order (one per FPN level).
        feature_spec: what produced the features (e.g. ``'mmseg:backbone'``), kept as metadata.
        hidden: width of the hidden layer.
        embed_dim: embedding size (contrastive only).
        temperature: τ of the InfoNCE logits (contrastive only).
        bank_size: clean-train embeddings kept as test-time negatives (contrastive only).
    """

    def __init__(self, kind: str, in_channels: Sequence[int], *, feature_spec: str = "", hidden: int = 256,
                 embed_dim: int = 64, temperature: float = 0.2, bank_size: int = 128) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
        channels = [check_positive_int("in_channels", int(c)) for c in in_channels]
        if not channels:
            raise ValueError("in_channels must list the channels of at least one feature map")
        if not 0 < temperature <= 10:
            raise ValueError(f"temperature must be in (0, 10]; got {temperature!r}")
        self.kind, self.in_channels, self.feature_spec = kind, channels, str(feature_spec)
        self.hidden = check_positive_int("hidden", hidden)
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.temperature = float(temperature)
        self.bank_size = check_positive_int("bank_size", bank_size)
        out = 4 if kind == "rotation" else self.embed_dim
        # LayerNorm: backbone and FPN features differ in scale by orders of magnitude.
        self.net = nn.Sequential(nn.LayerNorm(sum(channels), elementwise_affine=False),
                                 nn.Linear(sum(channels), self.hidden), nn.ReLU(), nn.Linear(self.hidden, out))
        self.register_buffer("bank", torch.zeros(0, self.embed_dim))
        self.source = "<in memory>"  # the file it was loaded from, for error messages

    def check_features(self, maps: Maps) -> None:
        """Raise if ``maps`` are not the feature view the head was trained on (channels per map)."""
        got = [m.shape[1] for m in _as_levels(maps)]
        if got != self.in_channels:
            raise ValueError(
                f"SSL head {self.source} was trained on {len(self.in_channels)} feature map(s) with channels "
                f"{self.in_channels} ({self.feature_spec or 'unknown view'}), but the model's features have "
                f"{len(got)} map(s) with channels {got}: train a head for this model and feature view "
                "(tools/train_ssl_head.py)")

    def forward_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        out = self.net(pooled)
        return F.normalize(out, dim=1) if self.kind == "contrastive" else out

    def forward(self, maps: Maps) -> torch.Tensor:
        """(N, 4) rotation logits or (N, embed_dim) unit embeddings of dense ``maps``."""
        self.check_features(maps)
        return self.forward_pooled(pool_features(maps))

    def metadata(self) -> dict[str, Any]:
        return dict(kind=self.kind, in_channels=self.in_channels, feature_spec=self.feature_spec,
                    hidden=self.hidden, embed_dim=self.embed_dim, temperature=self.temperature,
                    bank_size=self.bank_size)


# ----- objectives ---------------------------------------------------------------------------------
def info_nce_terms(anchor: torch.Tensor, views: torch.Tensor, negatives: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """log p(positive) of each view among {its anchor} ∪ negatives → (N, K); higher = more agreement.

    ``anchor`` (N, D), ``views`` (N, K, D) and ``negatives`` (B, D) are unit vectors; this is
    −InfoNCE with the anchor's own views as positives and the bank as negatives.
    """
    positive = (views * anchor[:, None]).sum(dim=-1, keepdim=True)  # (N, K, 1)
    negative = (anchor @ negatives.T)[:, None].expand(-1, views.shape[1], -1)  # (N, K, B)
    return torch.cat([positive, negative], dim=-1).div(temperature).log_softmax(dim=-1)[..., 0]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two batches of unit embeddings whose rows i are views of one image."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -math.inf)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


# ----- training on frozen features ----------------------------------------------------------------
def sample_view(generator: torch.Generator) -> list[Transform]:
    """One random training view: maybe a flip, then a rescale and a colour jitter."""
    view = [t.sample(generator) for t in VIEW_FAMILY]
    return ([HFlip()] if torch.rand((), generator=generator).item() < 0.5 else []) + view


def pooled_views(feature_fn: FeatureFn, images: Sequence[torch.Tensor],
                 draw_views: Callable[[], Sequence[Sequence[Transform]]], *, batch_size: int = 16,
                 pixel_range: PixelRange = DEFAULT_PIXEL_RANGE) -> torch.Tensor:
    """Pooled features of every image under V views → (M, V, D); nothing is differentiated.

    Images (each (3, H, W)) are batched with neighbours of the same size; ``draw_views()`` is
    called once per batch and returns its V views, each a list of concrete transforms applied
    in order (so random views differ between batches).
    """
    out: list[torch.Tensor] = []
    start = 0
    with torch.no_grad():
        while start < len(images):
            stop = start + 1
            while stop < min(len(images), start + batch_size) and images[stop].shape == images[start].shape:
                stop += 1
            batch = torch.stack(list(images[start:stop]))
            per_view = []
            for view in draw_views():
                x = batch
                for t in view:
                    x = t.apply(x, pixel_range)
                per_view.append(pool_features(feature_fn(x)).float().cpu())
            out.extend(torch.stack(per_view, dim=1))
            start = stop
    return torch.stack(out)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run tiny matrix products on one thread: on a busy 2-core machine, thread synchronisation made
    the head's steps 30× slower than the arithmetic they parallelise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(head: SSLHead, loss_fn, num: int, iters: int, batch_size: int, generator: torch.Generator) -> None:
    """AdamW on ``loss_fn(indices)`` over random minibatches of ``num`` training rows."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    head.train()
    with _one_thread():
        for step in range(iters):
            loss = loss_fn(torch.randperm(num, generator=generator)[:batch_size])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % max(1, iters // 5) == 0 or step == iters - 1:
                logger.info("ssl head step %d/%d: loss %.4f", step + 1, iters, loss.item())
    head.eval()


def train_head(kind: str, feature_fn: FeatureFn, images: Sequence[torch.Tensor], *, iters: int = 1000,
               seed: int = 0, held_out: float = 0.2, feature_spec: str = "", num_views: int = 4,
               batch_size: int = 64, pixel_range: PixelRange = DEFAULT_PIXEL_RANGE, hidden: int = 256,
               embed_dim: int = 64, temperature: float = 0.2,
               bank_size: int = 128) -> tuple[SSLHead, dict[str, Any]]:
    """Train an SSL head on the frozen ``feature_fn`` of clean ``images`` (each (3, H, W)).

    A seeded ``held_out`` fraction of the images is never trained on and gives the metric:
    rotation accuracy over all 4 turns (chance 0.25), or the contrastive positive-pair top-1
    (does view 1 of an image retrieve view 2 of the same image among all held-out images?).
    The contrastive head also stores the clean embeddings of up to ``bank_size`` training images.

    Returns:
        The head (eval mode, gradients off) and ``{'metric': name, 'value': ..., 'chance': ...}``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    check_positive_int("iters", iters)
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be a fraction in (0, 1); got {held_out!r}")
    num_test = max(2, round(len(images) * held_out))
    if len(images) - num_test < 2:
        raise ValueError(f"need at least {num_test + 2} images to train and hold out {held_out:.0%}; "
                         f"got {len(images)}")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(images), generator=generator).tolist()
    test_idx, train_idx = order[:num_test], order[num_test:]
    with torch.no_grad():
        channels = [m.shape[1] for m in _as_levels(feature_fn(images[0][None]))]
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's RNG untouched
        torch.manual_seed(int(seed))
        head = SSLHead(kind, channels, feature_spec=feature_spec, hidden=hidden, embed_dim=embed_dim,
                       temperature=temperature, bank_size=bank_size)
    if kind == "rotation":
        feats = pooled_views(feature_fn, images, lambda: [[r] for r in ROTATIONS], pixel_range=pixel_range)
        labels = torch.arange(4).repeat(len(train_idx))
        train = feats[train_idx].flatten(0, 1)
        _fit(head, lambda idx: F.cross_entropy(head.forward_pooled(train[idx]), labels[idx]), len(train), iters,
             batch_size, generator)
        with torch.no_grad():
            predicted = head.forward_pooled(feats[test_idx].flatten(0, 1)).argmax(dim=1)
        metrics = dict(metric="held-out rotation accuracy",
                       value=(predicted == torch.arange(4).repeat(num_test)).float().mean().item(), chance=0.25)
    else:
        check_positive_int("num_views", num_views, 2)
        feats = pooled_views(feature_fn, images, lambda: [[]] + [sample_view(generator) for _ in range(num_views)],
                             pixel_range=pixel_range)  # (M, 1 + V, D): the clean image first
        train = feats[train_idx, 1:]

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            pair = torch.stack([torch.randperm(num_views, generator=generator)[:2] for _ in idx])
            z = head.forward_pooled(train[idx[:, None], pair].flatten(0, 1)).view(len(idx), 2, -1)
            return nt_xent(z[:, 0], z[:, 1], head.temperature)

        _fit(head, loss_fn, len(train), iters, batch_size, generator)
        with torch.no_grad():
            z1, z2 = head.forward_pooled(feats[test_idx, 1]), head.forward_pooled(feats[test_idx, 2])
            top1 = ((z1 @ z2.T).argmax(dim=1) == torch.arange(num_test)).float().mean().item()
            head.bank = head.forward_pooled(feats[train_idx[:head.bank_size], 0])
        metrics = dict(metric="held-out positive-pair top-1", value=top1, chance=1.0 / num_test)
    head.requires_grad_(False)
    metrics.update(train_images=len(train_idx), held_out_images=num_test)
    return head, metrics


# ----- files --------------------------------------------------------------------------------------
def save_head(head: SSLHead, path: str | os.PathLike, metrics: dict[str, Any] | None = None) -> None:
    """Write ``head`` with its metadata (kind, in_channels, feature spec, training metrics)."""
    atomic_torch_save(dict(format=FILE_FORMAT, version=FILE_VERSION, **head.metadata(), metrics=dict(metrics or {}),
                           state_dict=head.state_dict()), path)


def load_head(path: str | os.PathLike, kind: str | None = None) -> SSLHead:
    """Read a head written by :func:`save_head` (tensors and plain metadata only: ``weights_only``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not an SSL head, or is one of another ``kind``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SSL head file {str(path)!r} does not exist; train one with tools/train_ssl_head.py")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"{str(path)!r} is not an SSL head file ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise ValueError(f"{str(path)!r} is not an SSL head file (written by tools/train_ssl_head.py)")
    if data["version"] != FILE_VERSION:
        raise ValueError(f"{str(path)!r} has SSL head format version {data['version']}; expected {FILE_VERSION}")
    if kind is not None and data["kind"] != kind:
        raise ValueError(f"{str(path)!r} holds a {data['kind']!r} head; the {kind!r} defense needs a {kind!r} head")
    head = SSLHead(data["kind"], data["in_channels"], feature_spec=data["feature_spec"], hidden=data["hidden"],
                   embed_dim=data["embed_dim"], temperature=data["temperature"], bank_size=data["bank_size"])
    head.bank = torch.empty_like(data["state_dict"]["bank"])  # the bank's size is known only from the file
    head.load_state_dict(data["state_dict"], strict=True)
    head.source = repr(str(path))
    head.eval().requires_grad_(False)
    return head
