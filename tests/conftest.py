"""Shared fixtures: a seed, and a tiny segmentation CNN trained in seconds on toy scenes.

The toy scenes are independent of the project's data generator on purpose: core and
attack tests must not depend on it.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

TOY_SIZE = 48
TOY_CLASSES = 3  # background, square, ring


@pytest.fixture
def seed() -> int:
    torch.manual_seed(0)
    return 0


def toy_scenes(n: int, seed: int, size: int = TOY_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Squares (class 1) and rings (class 2) of random colour on a noisy background, RGB 0–255."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.empty(n, 3, size, size)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        base = torch.rand(3, 1, 1, generator=g) * 160 + 40
        img = base + 15 * torch.randn(3, size, size, generator=g)
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cls = int(torch.randint(1, 3, (1,), generator=g))
            r = float(torch.rand((), generator=g)) * size * 0.12 + size * 0.1
            cy, cx = (torch.rand(2, generator=g) * (size - 2 * r) + r).tolist()
            if cls == 1:
                mask = ((ys - cy).abs() <= r * 0.85) & ((xs - cx).abs() <= r * 0.85)
            else:
                dist2 = (ys - cy) ** 2 + (xs - cx) ** 2
                mask = (dist2 <= r**2) & (dist2 >= (0.55 * r) ** 2)
            colour = torch.rand(3, 1, 1, generator=g) * 255
            img = torch.where(mask, colour + 10 * torch.randn(3, size, size, generator=g), img)
            labels[i][mask] = cls
        images[i] = img.clamp(0, 255)
    return images, labels


class ToySegNet(nn.Module):
    """A DeepLab-like toy: strided conv stem, dilated block, 1×1 classifier (logits at 1/2 scale)."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.Conv2d(width, TOY_CLASSES, 1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.stem((images - 128.0) / 64.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def toy_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The toy's logits upsampled to the image size (the model predicts at 1/2 scale)."""
    return F.interpolate(model(images), size=images.shape[-2:], mode="bilinear", align_corners=False)


def train_toy(steps: int, *, scale_every: int | None = None, adversarial=None) -> ToySegNet:
    """ToySegNet from scratch on 192 toy scenes: Adam with a one-cycle schedule, batches of 16 flipped every other
    step and, with ``scale_every``, rescaled by 0.75–1.25 every ``scale_every`` steps. ``adversarial`` (an
    ``AdversarialTraining``) replaces each batch by its attack before the step. Initial weights and batches are
    fixed, so two runs differ only in what the arguments change. Returned in eval mode."""
    images, labels = toy_scenes(192, seed=1)
    torch.manual_seed(0)
    model = ToySegNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=6e-3, total_steps=steps)
    g = torch.Generator().manual_seed(2)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (16,), generator=g)
        x, y = images[idx], labels[idx]
        if step % 2:
            x, y = x.flip(-1), y.flip(-1)
        if scale_every and step % scale_every == 0:
            scale = 0.75 + 0.5 * float(torch.rand((), generator=g))
            size = int(math.ceil(TOY_SIZE * scale / 2) * 2)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()
        if adversarial is not None:
            x = adversarial.perturb(model, x, y, loss_fn=lambda p, y=y: F.cross_entropy(toy_logits(model, p), y),
                                    image_seeds=[step * 16 + i for i in range(16)])
        loss = F.cross_entropy(toy_logits(model, x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return model.eval()


@dataclass
class ToyTask:
    model: ToySegNet
    images: torch.Tensor  # held-out scenes
    labels: torch.Tensor

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return toy_logits(self.model, images)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.logits(images).argmax(dim=1)


@pytest.fixture(scope="session")
def toy_task() -> ToyTask:
    """Train ToySegNet for 300 Adam steps with flip and scale augmentation (a few seconds on CPU).

    ``EQUI_TOY_TASK_CACHE=FILE`` keeps the trained weights in FILE across pytest runs: a mutation run starts one
    pytest per mutant and would otherwise train the same toy again each time. Not set in CI."""
    val_images, val_labels = toy_scenes(24, seed=3)
    cache = os.environ.get("EQUI_TOY_TASK_CACHE")
    if cache and os.path.exists(cache):
        model = ToySegNet()
        model.load_state_dict(torch.load(cache, weights_only=True))
        return ToyTask(model=model.eval(), images=val_images, labels=val_labels)
    model = train_toy(300, scale_every=3)
    if cache:
        torch.save(model.state_dict(), cache)
    return ToyTask(model=model, images=val_images, labels=val_labels)


@pytest.fixture(scope="session")
def toy_task64(toy_task) -> ToyTask:
    """``toy_task`` in float64, for comparisons of two computation paths through sign steps (an image alone
    vs in a batch). In float32 the two paths' kernels round differently (by CPU type and thread count), and
    a gradient component within that rounding of zero flips its sign: a whole step. In float64 the gap is
    ~1e-16 relative, so a flip needs a component within ~1e-12 of zero, which these images do not have."""
    return ToyTask(model=copy.deepcopy(toy_task.model).double(), images=toy_task.images.double(),
                   labels=toy_task.labels)


@pytest.fixture
def ssl_defense_calls(monkeypatch) -> list[tuple[str, float, float, float]]:
    """Every call of a self-supervised baseline defense during the test, as (class name,
    max |x' − x|, min x', max x'): proof that a framework path really ran it, within budget."""
    from equi_ext.defenses.ssl import SSLDefense

    calls = []
    stock_call = SSLDefense.__call__

    def spy(self, images, features, **kwargs):
        out = stock_call(self, images, features, **kwargs)
        calls.append((type(self).__name__, (out.images - images).abs().max().item(), out.images.min().item(),
                      out.images.max().item()))
        return out

    monkeypatch.setattr(SSLDefense, "__call__", spy)
    return calls


@pytest.fixture(autouse=True)
def _restore_equi_ext_logging():
    """A tool run in-process as ``__main__`` (``equi-ext TOOL`` uses runpy) sets the ``equi_ext`` logger up for a
    terminal (``start_tool``); undo that after each test, so later tests' ``caplog`` still sees its records."""
    import logging

    logger = logging.getLogger("equi_ext")
    saved = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def attribute_writes(monkeypatch):
    """``attribute_writes(model)``: a list that from then on receives the name of every attribute set on ``model``
    itself (``model.x = ...``; its submodules and parameters are not counted)."""
    def watch(model: nn.Module) -> list[str]:
        names: list[str] = []
        stock = nn.Module.__setattr__

        def recording(self, name, value):
            if self is model:
                names.append(name)
            stock(self, name, value)

        monkeypatch.setattr(nn.Module, "__setattr__", recording)
        return names

    return watch


@pytest.fixture
def assert_rerenders(tmp_path):
    """Check a tool's ``--render``: from a copy of a result JSON alone, the tool writes the same page and
    plots byte for byte, and the JSON names the command that measured it."""
    import json
    import shutil

    def check(tool, result_json, plots=()):
        copy_dir = tmp_path / "rerendered"
        copy_dir.mkdir(exist_ok=True)
        shutil.copy(result_json, copy_dir)
        tool.main(["--render", str(copy_dir / result_json.name)])
        for name in (result_json.with_suffix(".md").name, *plots):
            assert (copy_dir / name).read_bytes() == (result_json.parent / name).read_bytes(), name
        meta = json.loads(result_json.read_text())["provenance"]
        assert meta["command"].startswith("python tools/") and meta["torch_threads"] >= 1
        assert f"with `{meta['command']}`" in (result_json.with_suffix(".md")).read_text()

    return check


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped, saying why, on a machine without it."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
