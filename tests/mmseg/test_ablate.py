"""equi_ext.evaluation.ablations (tools/ablate.py): the four grids as data, their errors, and tiny end-to-end
runs on the demo model."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from equi_ext.core.defense import PRESETS
from equi_ext.core.transforms import TRANSFORM_SETS, HFlip, build_transforms
from equi_ext.defenses import build_defense
from equi_ext.evaluation import ablations

from .conftest import load_tool

#: What each ablation may override; everything else must stay at the preset.
KNOBS = {"transforms": {"transforms", "transforms_per_step"}, "eps_v": {"eps_v", "step_size"},
         "optimizer": {"optimizer"}, "constraints": {"transforms", "transforms_per_step"}}
#: Reduced grids of the two end-to-end runs (a bar and a line plot); the other two share their code path.
SMALL = {"eps_v": "2,8", "optimizer": "sgld,sgd"}


@pytest.mark.parametrize("name", list(ablations.ABLATIONS))
@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_grid_changes_only_the_ablated_knob(name, preset):
    base = build_defense(dict(type="equi", preset=preset))
    grid = ablations.build_grid(name, preset=preset)
    assert [value for _, value, _ in grid] == list(ablations.ABLATIONS[name].values)
    for _, _, overrides in grid:
        assert set(overrides) <= KNOBS[name]
        defense = build_defense(ablations.defense_cfg(overrides, preset, seed=0))
        for attr in ("steps", "eps_v", "step_size", "optimizer", "resample", "transforms_per_step", "transforms"):
            if attr not in overrides:
                assert getattr(defense, attr) == getattr(base, attr), (name, attr)


def test_transform_sets_are_the_papers_families():
    grid = {label: overrides for label, _, overrides in ablations.build_grid("transforms")}
    assert build_transforms(grid["paper"]["transforms"]) == TRANSFORM_SETS["paper"]
    assert build_transforms(grid["flip"]["transforms"]) == [HFlip()]
    assert len(grid["resize"]["transforms"]) == 4 and len(grid["rotate"]["transforms"]) == 2
    assert len(grid["flip+resize"]["transforms"]) == 5
    for overrides in grid.values():  # the whole set constrains every step, even under 'fast' (one per step)
        assert overrides["transforms_per_step"] == len(overrides["transforms"])


def test_eps_v_keeps_the_presets_step_ratio():
    for preset in ("fast", "paper"):
        ratio = PRESETS[preset]["step_size"] / PRESETS[preset]["eps_v"]
        for _, eps_v, overrides in ablations.build_grid("eps_v", ["1", "16"], preset=preset):
            assert overrides == dict(eps_v=eps_v, step_size=pytest.approx(eps_v * ratio))


def test_constraints_are_prefixes_of_one_pool():
    grid = ablations.build_grid("constraints", [1, 2, 4, 8])
    pool = grid[-1][2]["transforms"]
    assert sorted(map(str, build_transforms(pool))) == sorted(map(str, TRANSFORM_SETS["paper"]))
    for label, k, overrides in grid:
        assert label == f"K={k}" and overrides["transforms"] == pool[:k] and overrides["transforms_per_step"] == k


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eps_v", "--values", "2,0"], "'ε_v=0': eps_v must be > 0 pixel levels"),
        (["eps_v", "--values", "-1"], "eps_v must be > 0 pixel levels"),
        (["eps_v", "--values", "0.5"], r"eps_v=0.5 is in \(0, 1\)"),
        (["eps_v", "--values", "abc"], "eps_v value 'abc'"),
        (["eps_v", "--values", "inf"], "must be a finite number"),
        (["eps_v", "--values", "2,2"], "duplicate grid values"),
        (["constraints", "--values", "9"], r"must be an integer in \[1, 8\]"),
        (["transforms", "--values", "flip,spin"], "must be one of resize, flip, rotate"),
        (["optimizer", "--values", "adam"], "must be one of sgld, sgd"),
        (["optimizer", "--num-images", "0"], "num_images and attack_steps must be >= 1; got 0, 20"),
    ],
)
def test_bad_values_fail_before_running(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        load_tool("ablate").main([*argv, "--work-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_tool_passes_its_arguments_and_command_line(monkeypatch):
    tool = load_tool("ablate")
    calls = []
    monkeypatch.setattr(tool, "run_ablation", lambda **kwargs: calls.append(kwargs) or {})
    tool.main(["eps_v", "--values", "2,8", "--num-images", "2", "--seed", "3", "--work-dir", "a dir"])
    assert calls == [dict(ablation="eps_v", values=["2", "8"], num_images=2, preset="fast", attack_steps=20, seed=3,
                          data_root=str(ablations.DATA), work_dir="a dir",
                          command="python tools/ablate.py eps_v --values 2,8 --num-images 2 --seed 3 --work-dir "
                                  "'a dir'")]


def test_bad_ablation_name(capsys):
    with pytest.raises(SystemExit):
        load_tool("ablate").main(["epsilon"])
    assert "invalid choice: 'epsilon'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_tool("ablate").main([])
    assert "name an ablation (transforms, eps_v" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown ablation 'epsilon'; valid names: transforms, eps_v"):
        ablations.build_grid("epsilon")


@pytest.fixture(scope="module")
def run(synthetic_val_root, tmp_path_factory):
    """Run an ablation once per module on 1 image, PGD-1 and the ``SMALL`` grid: (work dir, JSON data)."""
    done = {}

    def run_one(name):
        if name not in done:
            work = tmp_path_factory.mktemp(f"ablate_{name}")
            done[name] = work, ablations.run_ablation(
                ablation=name, values=SMALL[name].split(","), num_images=1, attack_steps=1,
                data_root=str(synthetic_val_root), work_dir=work,
                command=f"python tools/ablate.py {name} --values {SMALL[name]}")
        return done[name]

    return run_one


def markdown_rows(text):
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header[1:], cells[1:]))
            for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}


@pytest.mark.parametrize("name", list(SMALL))
def test_report_files_agree(run, name, assert_rerenders):
    work, data = run(name)
    stem = work / f"ablation_{name}"
    for ext in ("md", "json", "csv", "png"):
        assert (stem.with_suffix(f".{ext}")).is_file(), ext
    with Image.open(stem.with_suffix(".png")) as image:
        image.verify()
        assert image.format == "PNG"
    labels = [label for label, _, _ in ablations.build_grid(name, SMALL[name].split(","))]
    with open(stem.with_suffix(".csv")) as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["label"] for r in csv_rows] == labels
    written = json.loads(stem.with_suffix(".json").read_text())
    assert written.pop("provenance")["command"] == f"python tools/ablate.py {name} --values {SMALL[name]}"
    assert written == json.loads(json.dumps(data))
    assert_rerenders(load_tool("ablate"), stem.with_suffix(".json"), plots=[f"ablation_{name}.png"])
    renamed = work / "renamed" / "my_result.json"  # the page links its plot by a name the JSON holds
    renamed.parent.mkdir()
    renamed.write_bytes(stem.with_suffix(".json").read_bytes())
    load_tool("ablate").main(["--render", str(renamed)])
    assert f"](ablation_{name}.png)" in renamed.with_suffix(".md").read_text()
    assert (renamed.parent / f"ablation_{name}.png").read_bytes() == stem.with_suffix(".png").read_bytes()
    text = stem.with_suffix(".md").read_text()
    assert f"python tools/ablate.py {name} --values {SMALL[name]}" in text
    table = markdown_rows(text)
    assert list(table) == ["vanilla (no defense)", *labels]
    for point, csv_row in zip([data["vanilla"], *data["points"]], [None, *csv_rows]):
        for header, key, fmt in ablations.COLUMNS:
            if key not in point:  # no shifts without a defense
                assert point is data["vanilla"] and table[point["label"]][header] == "—"
                continue
            assert table[point["label"]][header] == fmt.format(point[key]), (point["label"], header)
            if csv_row is not None:
                assert float(csv_row[key]) == pytest.approx(point[key], abs=1e-4)
    for point in data["points"]:
        assert 0 <= point["clean_mIoU"] <= 100 and 0 <= point["attacked_mIoU"] <= 100


def test_sgd_and_sgld_purify_differently(run):
    _, data = run("optimizer")
    sgld, sgd = data["points"]
    assert (sgld["label"], sgd["label"]) == ("SGLD", "SGD")
    # Same attacked input, seed and transforms: only the noise differs, so the images (and their shifts) do.
    assert sgld["attacked_shift_mean"] != sgd["attacked_shift_mean"]
    assert sgld["clean_shift_mean"] != sgd["clean_shift_mean"]


def test_larger_eps_v_moves_the_image_further(run):
    _, data = run("eps_v")
    small, large = data["points"]
    assert (small["value"], large["value"]) == (2.0, 8.0)
    for scenario in ("clean", "attacked"):
        assert small[f"{scenario}_shift_max"] <= 2.0 + 1e-3 < large[f"{scenario}_shift_max"] <= 8.0 + 1e-3
        assert large[f"{scenario}_shift_mean"] > small[f"{scenario}_shift_mean"]
