"""Property-based test of the public API: whatever it is given, a call either returns a finite result of the
right shape inside the pixel range and budget, or raises ``ValueError``/``TypeError`` naming what is wrong —
never NaN, never another exception from deep inside torch, never a hang.

Inputs drawn: batch and image sizes (down to 1×1), dtypes (floating and integer), the pixel range (stated or
the default, images on the 0–1 or 0–255 scale), budgets (negative, zero, fractional, huge, inf, NaN), step
counts (negative, zero, small) and NaN/inf pixels. Derandomised (the same examples on every run) and bounded:
each example must finish within ``EXAMPLE_SECONDS``.
"""

from __future__ import annotations

import math
import signal
from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import equi_ext
from equi_ext.attacks import ATTACKS

EXAMPLE_SECONDS = 20
#: Words that name an argument or the input in an error message.
NAMED = ("images", "eps", "eps_v", "steps", "step_size", "pixel_range", "targets", "min_size", "preset", "dtype",
         "shape", "transforms", "size", "reduction")
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(HealthCheck))

torch.manual_seed(0)
_NET = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))


def features(x: torch.Tensor) -> torch.Tensor:
    """A small dense network on any floating dtype (computed in float32, as a user's model would cast)."""
    return _NET[:2](x.float() / 255)


def logits(x: torch.Tensor) -> torch.Tensor:
    return _NET(x.float() / 255)


@contextmanager
def time_limit(seconds: int):
    def hang(signum, frame):
        raise AssertionError(f"the call ran past {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


#: What each example gets wrong: nothing (half the examples), or one of these.
FAULTS = [None] * 6 + ["size", "dtype", "scale", "pixel", "budget", "steps"]
GOOD_BUDGETS, BAD_BUDGETS = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 255.0, 1e9, math.inf], [-1.0, 0.5, math.nan, -math.inf]


def budgets(fault: str | None):
    return st.sampled_from(BAD_BUDGETS if fault == "budget" else GOOD_BUDGETS)


def step_counts(fault: str | None, default_allowed: bool = True):
    return st.sampled_from([-1, 0] if fault == "steps" else [1, 2, 3] + [None] * default_allowed)


@st.composite
def image_batches(draw, fault: str | None):
    """(images, the pixel range stated or None): 0–255 images (0–1 ones with their range stated) unless
    ``fault`` names what to get wrong."""
    n = draw(st.integers(1, 2))
    sizes = [1, 7] if fault == "size" else [16, 24]
    h, w = draw(st.sampled_from(sizes)), draw(st.sampled_from(sizes))
    dtype = draw(st.sampled_from([torch.uint8, torch.int64] if fault == "dtype" else
                                 [torch.float32, torch.float32, torch.float64, torch.float16]))
    stated = draw(st.sampled_from([None, (0.0, 255.0), (0.0, 1.0)]))
    unit = stated == (0.0, 1.0)
    if fault == "scale":  # images on the other scale than the range says
        unit, stated = not unit, (stated if stated == (0.0, 1.0) else None)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    images = torch.rand(n, 3, h, w, generator=g, dtype=torch.float64) * (1.0 if unit else 255.0)
    if fault == "pixel":
        images[draw(st.integers(0, n - 1)), 0, 0, 0] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    images = images.to(dtype) if dtype.is_floating_point else images.round().clamp(0, 255).to(dtype)
    return images, stated


def in_units(budget: float, pixel_range) -> float:
    """A budget in levels of 255, in the units of ``pixel_range``."""
    return budget if pixel_range is None else budget * (pixel_range[1] - pixel_range[0]) / 255


def check_outcome(call, images: torch.Tensor, pixel_range, radius: float | None) -> None:
    """``call()`` returns images like ``images``, inside ``pixel_range`` and within ``radius`` of them, or a
    per-image score; otherwise it raises ValueError/TypeError with a message naming the problem."""
    try:
        with time_limit(EXAMPLE_SECONDS):
            out = call()
    except (ValueError, TypeError) as error:
        assert any(word in str(error) for word in NAMED), f"the error names nothing: {error!r}"
        event(f"refused: {type(error).__name__}")
        return
    event("returned")
    assert torch.isfinite(out).all(), "a result with NaN or inf"
    if out.dim() == 1:  # a per-image score
        assert out.shape == images.shape[:1] and (out.abs() <= 1 + 1e-4).all()
        return
    assert out.shape == images.shape and out.dtype == images.dtype
    low, high = pixel_range or (0.0, 255.0)
    tol = 1e-3 * (high - low)
    assert low - tol <= out.min() and out.max() <= high + tol
    if radius is not None and math.isfinite(radius):
        assert (out.double() - images.double()).abs().max() <= radius * (1 + 1e-3) + tol


@pytest.mark.filterwarnings("ignore")
@PROPERTY_SETTINGS
@given(data=st.data(), fault=st.sampled_from(FAULTS), method=st.sampled_from(["equi", "invariance", "random"]),
       transforms=st.sampled_from([None, ["hflip"], ["resize:0.5"]]))
def test_defend_returns_repaired_images_or_a_named_error(data, fault, method, transforms):
    images, stated = data.draw(image_batches(fault))
    eps_v = in_units(data.draw(budgets(fault)), stated)
    kwargs = {"eps_v": eps_v} | ({"pixel_range": stated} if stated else {})
    if method != "random":
        steps = data.draw(step_counts(fault))
        kwargs |= ({"steps": steps} if steps else {}) | ({"transforms": transforms} if transforms else {})
    check_outcome(lambda: equi_ext.defend(features, images, method, **kwargs).images, images, stated, eps_v)


@pytest.mark.filterwarnings("ignore")
@PROPERTY_SETTINGS
@given(data=st.data(), fault=st.sampled_from(FAULTS),
       name=st.sampled_from(["pgd", "ifgsm", "mim", "segpgd", "cospgd", "apgd"]),
       step_size=st.sampled_from([None, None, 0.25, 1.0]))
def test_attacks_return_images_within_the_budget_or_a_named_error(data, fault, name, step_size):
    images, stated = data.draw(image_batches(fault))
    eps, steps = in_units(data.draw(budgets(fault)), stated), data.draw(step_counts(fault))
    if fault == "budget" and data.draw(st.booleans()):  # a bad step size instead of a bad radius
        eps, step_size = in_units(4.0, stated), data.draw(st.sampled_from([0.0, -1.0, math.inf, math.nan]))
    cfg = {"type": name, "eps": eps, "logits_fn": logits}
    cfg |= {key: value for key, value in (("steps", steps), ("step_size", step_size), ("pixel_range", stated))
            if value is not None and not (key == "step_size" and name == "apgd")}
    targets = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.long)
    check_outcome(lambda: ATTACKS.build(cfg)(images, targets), images, stated, eps)


@pytest.mark.filterwarnings("ignore")
@PROPERTY_SETTINGS
@given(data=st.data(), fault=st.sampled_from(FAULTS),
       transforms=st.sampled_from([None, ["hflip"], ["resize:0.5", "hflip"]]),
       reduction=st.sampled_from(["dense", "flat", "pooled"]))
def test_equivariance_score_is_a_cosine_or_a_named_error(data, fault, transforms, reduction):
    images, stated = data.draw(image_batches(fault))
    kwargs = {"reduction": reduction} | ({"pixel_range": stated} if stated else {})
    kwargs |= {"transforms": transforms} if transforms else {}
    check_outcome(lambda: equi_ext.equivariance_score(features, images, **kwargs), images, stated, None)
