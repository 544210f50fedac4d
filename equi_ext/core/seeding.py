"""Per-image random streams, so results do not depend on batch size, sharding or resuming."""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence

import torch


def file_seed(path: str | os.PathLike) -> int:
    """An image's seed from its file name (not its folder, which differs between machines), so
    results depend neither on batching, sharding or resuming nor on where the data lives."""
    return zlib.crc32(os.path.basename(str(path)).encode())


def image_seed(file_name: str | os.PathLike | None, image_id: object, index: int) -> int:
    """The seed of one image in a batch: its file name's (``file_seed``), else an integer image id, else
    its index in the batch (the last two only for in-memory inputs, which have no stable name)."""
    if file_name:
        return file_seed(file_name)
    return image_id if isinstance(image_id, int) and not isinstance(image_id, bool) else index


def content_seeds(images: torch.Tensor, image_seeds: Sequence[int] | None = None) -> list[int]:
    """``image_seeds``, or else one seed per image from its pixel values (CRC-32 of its float32 bytes), so an
    image passed without a seed gets the same random draws in any batch, at any position."""
    if image_seeds is not None:
        return list(image_seeds)
    pixels = images.detach().to("cpu", torch.float32).contiguous().numpy()
    return [zlib.crc32(image.tobytes()) for image in pixels]


def image_generators(seed: int, image_seeds: Sequence[int] | None, n: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded by (seed, image_seed); image_seeds default to 0..n−1."""
    seeds = list(image_seeds) if image_seeds is not None else list(range(n))
    if len(seeds) != n:
        raise ValueError(f"image_seeds must have one entry per image ({n}); got {len(seeds)}")
    # hash() of a tuple of ints is stable across processes (no string hashing involved).
    return [torch.Generator().manual_seed(hash((int(seed), int(s))) & 0x7FFFFFFF) for s in seeds]


def _to_device_of(noise: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """CPU-drawn noise onto the images' device; to a GPU through pinned memory, without waiting for the copy."""
    if images.device.type == "cuda":
        return noise.pin_memory().to(device=images.device, dtype=images.dtype, non_blocking=True)
    return noise.to(device=images.device, dtype=images.dtype)


def normal_like(images: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Standard normal noise shaped like ``images``, one generator per image (drawn on the CPU, so every
    device gets the same numbers)."""
    noise = [torch.randn(images.shape[1:], generator=g) for g in generators]
    return _to_device_of(torch.stack(noise), images)


def uniform_like(images: torch.Tensor, generators: Sequence[torch.Generator], low: float, high: float) -> torch.Tensor:
    """Uniform noise in [low, high) shaped like ``images``, one generator per image (drawn on the CPU)."""
    noise = [torch.rand(images.shape[1:], generator=g) for g in generators]
    return _to_device_of(low + (high - low) * torch.stack(noise), images)
