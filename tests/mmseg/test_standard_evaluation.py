"""The one-command standard evaluation: which runs it makes, its convergence loop, its security curve, its files."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from equi_ext.evaluation import standard
from equi_ext.evaluation.sanity_checks import TOLERANCE

from .conftest import load_tool


class ScriptedBackend:
    """A model whose per-image quality under each run is given by ``quality(label, column, attack)``;
    worst case = mean of each image's lowest quality (the per-image definition on a mean metric)."""

    framework, metric, key, model_name, settings = "fake", "mIoU", "mIoU", "scripted model", "scripted"

    def __init__(self, quality, dense: bool = True) -> None:
        self.quality, self.dense, self.calls = quality, dense, []

    def defense(self, name):
        return dict(type="equi")

    def supports(self, attack):
        inner = attack and (attack.get("attack") or attack)
        return self.dense or inner is None or inner["type"] not in ("sea", "cw")

    def cell(self, attack, defense, record_dir, resume=False):
        self.calls.append((attack[0], defense[0], attack[1]))
        per_image = self.quality(attack[0], defense[0], attack[1])
        return dict(attack=attack[0], defense=defense[0], mIoU=sum(per_image) / len(per_image), per_image=per_image,
                    run_images=len(per_image), seconds=0.0)

    def worst_case(self, rows):
        picks = [min(rows, key=lambda r: r["per_image"][i]) for i in range(len(rows[0]["per_image"]))]
        lowest = [row["per_image"][i] for i, row in enumerate(picks)]
        return dict(mIoU=sum(lowest) / len(lowest), picks=[f"{r['attack']} / {r['defense']}" for r in picks])


def run_scripted(monkeypatch, tmp_path, quality, dense=True, **kwargs):
    backend = ScriptedBackend(quality, dense)
    monkeypatch.setattr(standard, "build_backend", lambda *args: backend)
    result = standard.standard_evaluation(data_root=tmp_path / "data", work_dir=tmp_path / "out", **kwargs)
    return backend, result


def steps_of(attack):
    return (attack.get("attack") or attack)["steps"]


def test_iterations_double_for_the_attacks_the_worst_case_takes_until_it_settles(monkeypatch, tmp_path):
    """SEA-BPDA falls 50 → 46 → 44 → 43 → 42.75 as its iterations double; transfer holds image 0 at 45 until
    BPDA passes it. Each doubling re-runs the attacks the worst case took an image from (transfer only while
    it does) plus SEA-BPDA, pools them, and stops when the worst case moves by less than 0.5."""
    through = {10: 50.0, 20: 46.0, 40: 44.0, 80: 43.0, 160: 42.75}

    def quality(label, column, attack):
        if attack is None:
            return [70.0, 70.0]
        if attack["type"] == "bpda" and "attack" in attack and attack["eot_samples"] == 1:
            return [through[steps_of(attack)]] * 2
        if attack["type"] == "sea" and column == "defended":  # transfer
            return [45.0, 60.0]
        return [60.0, 60.0]

    backend, result = run_scripted(monkeypatch, tmp_path, quality, epsilons=(0, 4), max_doublings=5)
    points = result["convergence"]["curve"]
    assert [p["steps"] for p in points] == [10, 20, 40, 80, 160]
    assert [p["worst_case"] for p in points] == [47.5, 45.5, 44.0, 43.0, 42.75]
    assert [p["ran"] for p in points] == [[], ["SEA-20 transfer", "SEA-20-BPDA"], ["SEA-40 transfer", "SEA-40-BPDA"],
                                          ["SEA-80-BPDA"], ["SEA-160-BPDA"]]
    assert result["convergence"]["converged"] is True
    assert result["worst_case"]["defended"]["per_image"] == 42.75
    assert not any(label.startswith(("PGD-20", "BPDA-PGD-20")) for label, _, _ in backend.calls)
    # No more doublings than asked: not converged is said so.
    _, capped = run_scripted(monkeypatch, tmp_path / "capped", quality, epsilons=(0, 4), max_doublings=2)
    assert [p["steps"] for p in capped["convergence"]["curve"]] == [10, 20, 40]
    assert capped["convergence"]["converged"] is False
    assert "**Not converged**" in (tmp_path / "capped/out/standard_evaluation.md").read_text()
    assert abs(42.75 - 43.0) < TOLERANCE < abs(43.0 - 44.0)  # the script straddles the tolerance as meant


def test_the_worst_case_is_per_image_over_every_attacked_run_and_the_curve_is_per_eps(monkeypatch, tmp_path):
    """Image 0 is hurt most by transfer, image 1 by BPDA: the defended worst case takes each image's own worst;
    the security curve's defended point pools transfer and BPDA at that ε, its ε = 0 point is clean."""

    def quality(label, column, attack):
        if attack is None:
            return [80.0, 90.0] if column == "vanilla" else [75.0, 85.0]
        inner = attack.get("attack") or attack
        level = inner["eps"]
        if column == "vanilla":
            return [40.0 - level, 30.0 - level]
        if attack["type"] == "sea":  # transfer
            return [20.0 - level, 70.0]
        if attack["type"] == "bpda" and "attack" in attack:
            return [65.0, 25.0 - level]
        return [66.0, 66.0]

    backend, result = run_scripted(monkeypatch, tmp_path, quality, epsilons=(0, 2, 4), max_doublings=1)
    assert result["worst_case"]["defended"]["per_image"] == pytest.approx(((20 - 4) + (25 - 4)) / 2)
    assert result["worst_case"]["vanilla"]["per_image"] == pytest.approx(((40 - 4) + (30 - 4)) / 2)
    curve = {p["eps"]: p for p in result["security_curve"]}
    assert curve[0] == dict(eps=0, vanilla=85.0, defended=80.0)
    at_2 = dict(vanilla=pytest.approx(((40 - 2) + (30 - 2)) / 2), defended=pytest.approx(((20 - 2) + (25 - 2)) / 2))
    assert curve[2] == dict(eps=2, **at_2, single_eps=at_2)  # the smallest ε: nothing smaller to pool
    # The curve's ε = 4 point is part 1's runs, not a second evaluation of them.
    transfer = [a for label, column, a in backend.calls
                if column == "defended" and a and a["type"] == "sea" and a["steps"] == 10]
    assert sorted(a["eps"] for a in transfer) == [2.0, 4.0]


def test_the_security_curve_never_rises_with_eps_though_the_attack_at_one_eps_does(monkeypatch, tmp_path):
    """An attack that weakens at large budgets (each image's quality falls to ε = 4, then rises again): every
    point of the curve takes each image's worst over the runs at its ε and all smaller ones, so the curve is
    non-increasing; the runs at each ε alone are kept beside it and show the rise."""
    cold = {1: [50.0, 40.0], 2: [30.0, 45.0], 4: [20.0, 10.0], 8: [35.0, 12.0], 16: [60.0, 5.0], 32: [70.0, 80.0]}

    def quality(label, column, attack):
        if attack is None:
            return [90.0, 90.0]
        inner = attack.get("attack") or attack
        shift = 0.0 if column == "vanilla" else (5.0 if attack["type"] == "sea" else 2.0)  # transfer, BPDA
        return [q + shift for q in cold[int(inner["eps"])]]

    _, result = run_scripted(monkeypatch, tmp_path, quality, epsilons=(0, 1, 2, 4, 8, 16, 32), max_doublings=0)
    curve = result["security_curve"]
    for column, shift in (("vanilla", 0.0), ("defended", 2.0)):
        values = [p[column] for p in curve]
        assert values == sorted(values, reverse=True), column
        single = [p["single_eps"][column] for p in curve[1:]]
        assert single == [sum(cold[e]) / 2 + shift for e in (1, 2, 4, 8, 16, 32)]
        assert single[-1] > single[2]  # the attack alone is weaker at ε = 32 than at ε = 4
        # each image's own worst so far: image 0 from ε = 4 on, image 1 from ε = 16 on
        assert values[-1] == pytest.approx((20.0 + 5.0) / 2 + shift)
        assert values[3] == pytest.approx((20.0 + 10.0) / 2 + shift)
    page = (tmp_path / "out/standard_evaluation.md").read_text()
    assert "| vanilla, at this ε only | 90.00 | 45.00 | 37.50 | 15.00 | 23.50 | 32.50 | 75.00 |" in page


def test_without_dense_logits_apgd_replaces_sea(monkeypatch, tmp_path):
    backend, result = run_scripted(monkeypatch, tmp_path, lambda *a: [50.0], dense=False, epsilons=(0, 4),
                                   max_doublings=0, steps=3)
    kinds = {(a.get("attack") or a)["type"] for _, _, a in backend.calls if a}
    assert "sea" not in kinds and "apgd" in kinds
    assert "APGD-3-BPDA" in result["attacks"] and result["convergence"]["converged"] is None


def test_bad_settings_are_refused_before_anything_runs(tmp_path):
    tool = load_tool("standard_evaluation")
    for args, message in ((["--steps", "0"], "steps"), (["--eps", "300"], "eps must be in"),
                          (["--epsilons", "0,x"], "--epsilons takes numbers"), (["--preset", "magic"], "unknown preset"),
                          (["--max-doublings", "-1"], "max_doublings"),
                          (["--checkpoint", str(tmp_path / "missing.pth")], "does not exist")):
        with pytest.raises(SystemExit, match=message):
            tool.main([*args, "--work-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="cannot read the result"):
        tool.main(["--render", str(tmp_path / "missing.json")])


def test_standard_evaluation_on_the_demo_deeplabv3(synthetic_val_root, tmp_path, assert_rerenders):
    """The real run, at the smallest budget: every part through MMSeg's test loop, the files it promises."""
    result = load_tool("standard_evaluation").main([
        "--data-root", str(synthetic_val_root), "--num-images", "2", "--steps", "1", "--eot-samples", "2",
        "--max-doublings", "1", "--epsilons", "0,4,16", "--work-dir", str(tmp_path)])
    attacks = result["attacks"]
    assert set(attacks) == {"clean", "SEA-1 (undefended model)", "SEA-1 transfer", "SEA-1-BPDA", "EOT-SEA-1-BPDA ×2",
                            "PGD-1", "BPDA-PGD-1", "adaptive-1 λ_e=1"}
    defended = [row["defended"] for label, row in attacks.items() if label != "clean" and "defended" in row]
    worst = result["worst_case"]["defended"]
    assert worst["quoted"] == min(worst["per_image"], worst["greedy"])
    assert worst["greedy"] <= min(defended) + 1e-9  # mIoU pools pixels: only the greedy pick is never above a run
    curve = {p["eps"]: p for p in result["security_curve"]}
    assert curve[0] == dict(eps=0, vanilla=attacks["clean"]["vanilla"], defended=attacks["clean"]["defended"])
    assert curve[4]["vanilla"] == attacks["SEA-1 (undefended model)"]["vanilla"]
    assert curve[16]["vanilla"] < curve[0]["vanilla"]
    assert [p["steps"] for p in result["convergence"]["curve"]][:1] == [1]
    assert set(result["seconds"]) == {"attacks", "convergence", "security curve"}
    saved = json.loads((tmp_path / "standard_evaluation.json").read_text())
    assert saved["worst_case"] == result["worst_case"]
    with Image.open(tmp_path / "security_curve.png") as png:
        assert png.size[0] > 300 and png.size[1] > 200
    text = (tmp_path / "standard_evaluation.md").read_text()
    assert f"Quoted robust mIoU: {worst['quoted']:.2f} defended" in text
    # A committed result re-renders to the same page and plot without evaluating anything.
    assert_rerenders(load_tool("standard_evaluation"), tmp_path / "standard_evaluation.json",
                     plots=["security_curve.png"])


def test_a_reported_point_is_never_above_the_one_at_a_smaller_eps():
    """Mask AP of images pooled one by one can rise with ε (the demo Mask R-CNN's defended curve did: 13.52 at
    ε = 8, 16.49 at 16); the reported point takes the lower of it and the point before."""
    from equi_ext.evaluation.standard import security_points

    raw = [dict(eps=0, vanilla=40.0, defended=44.0), dict(eps=4, vanilla=14.1, defended=24.1),
           dict(eps=8, vanilla=12.1, defended=13.5, single_eps=dict(vanilla=18.0, defended=19.0)),
           dict(eps=16, vanilla=9.4, defended=16.5), dict(eps=32, vanilla=6.1, defended=12.0)]
    points = security_points(raw)
    assert [p["defended"] for p in points] == [44.0, 24.1, 13.5, 13.5, 12.0]
    assert [p["vanilla"] for p in points] == [40.0, 14.1, 12.1, 9.4, 6.1]
    assert points[2]["single_eps"] == dict(vanilla=18.0, defended=19.0) and raw[3]["defended"] == 16.5


def test_the_convergence_loop_doubles_until_a_doubling_moves_less_than_the_tolerance_or_the_cap():
    """One loop serves the standard evaluation (a cap on doublings, the first value already measured) and the
    honesty checks (a cap on iterations): it measures at 2×, 4×, … the iterations and stops at the first change
    below the tolerance, or when the cap is reached."""
    from equi_ext.evaluation.sanity_checks import double_until_settled

    values = {5: 50.0, 10: 46.0, 20: 44.0, 40: 43.8, 80: 43.7}
    asked = []

    def measure(steps):
        asked.append(steps)
        return values[steps]

    assert double_until_settled(5, measure, max_doublings=9) == [(5, 50.0), (10, 46.0), (20, 44.0), (40, 43.8)]
    assert asked == [5, 10, 20, 40]
    asked.clear()
    assert double_until_settled(5, measure, max_doublings=1, first=50.0) == [(5, 50.0), (10, 46.0)]
    assert asked == [10]
    assert double_until_settled(5, measure, max_doublings=0, first=1.0) == [(5, 1.0)]
