"""The contributing guide's recipe for a framework, followed once (docs/contributing.md, "A framework").

A third "framework" is written here as its recipe says: a plain torch segmenter whose ``predict`` is the hook
(steps 2: a ``PixelBatch`` of its inputs, one ``EquiPipeline`` built once, the model's active run read at each
batch), a backend (step 3: its cells through ``equi_ext.cells.run_cell``, its worst case from ``runs_of``) added to
``BACKENDS``, and its ``SSL_HEADS`` entry (step 4). Nothing else is switched: the robustness grid and the standard
evaluation run on it by name, and what they report is what this framework measured.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from equi_ext.cells import Cell, run_cell, runs_of
from equi_ext.core.metrics import worst_case_per_image
from equi_ext.defenses import preset_settings
from equi_ext.evaluation import backends, demo, robustness, standard
from equi_ext.pipeline import CONFIGURED_RUN, EquiPipeline, EquiRun, PixelBatch, active_run, running, scenario_of
from equi_ext.reporting import atomic_write_json, record_paths

from .conftest import toy_logits, toy_scenes

FRAMEWORK = "toyseg"


class ToyBatch(PixelBatch):
    """The toy framework's inputs: RGB 0–255 images of one size, their label maps and dataset indices."""

    def __init__(self, model: ToySegmenter, images: torch.Tensor, labels: torch.Tensor, indices: list[int]) -> None:
        super().__init__(model, len(images))
        self.images, self.labels, self.indices = images, labels, indices
        self.out = images.clone()

    def group_key(self, i: int) -> tuple:
        return tuple(self.images[i].shape)

    def pixels(self, idx: list[int]) -> torch.Tensor:
        return self.images[idx]

    def seed(self, i: int) -> int:
        return self.indices[i]

    def targets(self, idx: list[int]) -> torch.Tensor:
        return self.labels[idx]

    def logits_fn(self, idx: list[int]):
        return lambda pixels: toy_logits(self.model.net, pixels)

    def loss_fn(self, idx: list[int]):
        return lambda pixels, labels: F.cross_entropy(toy_logits(self.model.net, pixels), labels)

    def view(self, idx: list[int], pixels: torch.Tensor):
        return self.model.net.features

    def put(self, idx: list[int], pixels: torch.Tensor, changed: bool) -> None:
        self.out[idx] = pixels


class ToySegmenter(nn.Module):
    """The framework's model: ``predict`` runs the pipeline of the active run (none: as configured)."""

    def __init__(self, net: nn.Module, defense: dict | None = None, attack: dict | None = None) -> None:
        super().__init__()
        self.net = net
        self.pipeline = EquiPipeline(defense, attack, needs_logits=True)
        self.scenarios_seen: list[str | None] = []

    def predict(self, images: torch.Tensor, labels: torch.Tensor, indices: list[int]) -> torch.Tensor:
        run = active_run(self)
        self.scenarios_seen.append(run.scenario)
        batch = ToyBatch(self, images, labels, indices)
        (run.pipeline or self.pipeline).process(batch, run.scenario, run.record_scores, run.sink)
        with torch.no_grad():
            return toy_logits(self.net, batch.out).argmax(dim=1)


class ToyBackend:
    """The toy framework's demo model on ``num_images`` toy scenes: pixel accuracy, defense budgets from a preset."""

    framework, metric, key = FRAMEWORK, "pixel accuracy", "accuracy"
    model_name = "toy segmenter"
    takes_preset = True
    net: nn.Module  # the trained toy (the fixture sets it)
    unbounded_measure = ("pixel accuracy", lambda row: row["accuracy"])

    def __init__(self, data_root: Path, num_images: int, work_dir: Path, checkpoint: Path | None = None,
                 preset: str = "fast") -> None:
        self.preset = preset
        self.images, self.labels = toy_scenes(num_images, seed=3)
        self.model = ToySegmenter(self.net).eval()
        self.files = [f"toy_{i}.png" for i in range(num_images)]

    @property
    def settings(self) -> str:
        return f"defense budgets from preset `{self.preset}`"

    def defense(self, name: str) -> dict | None:
        if name == "vanilla":
            return None
        kind = "equi" if name == "equivariance" else name
        return dict(type=kind, **preset_settings(kind, self.preset))

    def supports(self, attack: dict | None) -> bool:
        return True

    def cell(self, attack: Cell, defense: Cell, record_dir: Path, resume: bool = False,
             corruption: dict | None = None) -> dict:
        attack, defense = Cell(*attack), Cell(*defense)
        paths = record_paths(record_dir, self.files)

        def run_images(todo: list[int]) -> float:
            start = time.perf_counter()
            run = EquiRun(scenario_of(attack.cfg, defense.cfg), pipeline=EquiPipeline(defense.cfg, attack.cfg,
                                                                                      needs_logits=True))
            with running(self.model, run):
                predicted = self.model.predict(self.images[todo], self.labels[todo], todo)
            for j, i in enumerate(todo):
                right = int((predicted[j] == self.labels[i]).sum())
                atomic_write_json(paths[i], dict(img=self.files[i], right=right, total=self.labels[i].numel(),
                                                 accuracy=100.0 * right / self.labels[i].numel(), loss=0.0))
            return time.perf_counter() - start

        return run_cell(attack, defense, self.files, record_dir, stamp=dict(model=self.model_name),
                        resume=resume, run_images=run_images, score=pooled_accuracy)

    def worst_case(self, rows: list[dict]) -> dict:
        runs = runs_of(rows)
        picks = worst_case_per_image(runs, quality="accuracy")
        return dict(accuracy=pooled_accuracy([runs[name][i] for i, name in enumerate(picks)])["accuracy"],
                    picks=picks)


def pooled_accuracy(records: list[dict]) -> dict:
    return dict(accuracy=100.0 * sum(r["right"] for r in records) / sum(r["total"] for r in records))


@pytest.fixture
def toy_framework(toy_task, monkeypatch):
    """Steps 3 and 4 of the recipe: the backend in ``BACKENDS`` and an (empty) ``SSL_HEADS`` entry."""
    monkeypatch.setitem(backends.BACKENDS, FRAMEWORK, ToyBackend)
    monkeypatch.setitem(demo.SSL_HEADS, FRAMEWORK, {})
    monkeypatch.setattr(ToyBackend, "net", toy_task.model, raising=False)


def test_the_robustness_grid_runs_on_a_new_framework_by_name(toy_framework, tmp_path):
    data = robustness.benchmark_robustness(framework=FRAMEWORK, defense_names=["vanilla", "random", "equivariance"],
                                           attack_names=["clean", "pgd", "bpda"], seeds=[0], num_images=3, steps=2,
                                           bpda_steps=1, eot_samples=1, lambdas=[1.0], data_root=tmp_path / "none",
                                           work_dir=tmp_path / "rob")
    assert data["framework"] == FRAMEWORK and data["metric_name"] == "pixel accuracy"
    assert data["columns"]["random"] == dict(type="random", eps_v=4.0)  # the preset's ε_v
    table = data["table"]
    clean, pgd = table["clean"]["vanilla"][0], table["PGD-2"]["vanilla"][0]
    assert clean > pgd  # the attack ran, through this framework's loss
    worst = table[robustness.WORST]
    for column in ("vanilla", "random", "equivariance"):  # each image's worst: at most every attack's pooled value
        attacked = [values[column][0] for label, values in table.items() if label not in ("clean", robustness.WORST)]
        assert worst[column][0] <= min(attacked) + 1e-9
    assert (tmp_path / "rob" / "robustness.md").is_file()


def test_the_standard_evaluation_runs_on_a_new_framework_by_name(toy_framework, tmp_path):
    data = standard.standard_evaluation(framework=FRAMEWORK, num_images=2, steps=1, eot_samples=1,
                                        max_doublings=0, epsilons=(0, 4), data_root=tmp_path / "none",
                                        work_dir=tmp_path / "std")
    assert data["framework"] == FRAMEWORK and data["defense"]["type"] == "equi"
    assert data["defense"]["preset"] == "fast"
    assert {point["eps"] for point in data["security_curve"]} == {0, 4}
    assert (tmp_path / "std" / "standard_evaluation.md").is_file()


def test_the_hook_reads_the_run_not_model_attributes(toy_task):
    model = ToySegmenter(toy_task.model, defense=dict(type="equi", preset="fast", steps=1))
    images, labels = toy_task.images[:2], toy_task.labels[:2]
    model.predict(images, labels, [0, 1])
    with running(model, EquiRun("clean")):
        model.predict(images, labels, [0, 1])
    assert model.scenarios_seen == [CONFIGURED_RUN.scenario, "clean"]
