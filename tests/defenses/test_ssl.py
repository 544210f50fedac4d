"""The rotation and contrastive baselines on a toy model: budget, the objective they raise, heads on disk."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from equi_ext.core.ssl import SSLHead, info_nce_terms, load_head, nt_xent, save_head, train_head
from equi_ext.core.transforms import HFlip, Resize, Rot90
from equi_ext.defenses import DEFENSES, ContrastiveDefense, RotationDefense, build_defense

from ..conftest import toy_scenes


def oriented_scenes(n: int, seed: int) -> torch.Tensor:
    """Toy scenes lit from below: a canonical "up", without which rotation is unpredictable."""
    images, _ = toy_scenes(n, seed=seed)
    return (images + torch.linspace(-60, 60, images.shape[-2]).view(1, 1, -1, 1)).clamp(0, 255)


@pytest.fixture(scope="module")
def heads(toy_task):
    images = list(oriented_scenes(40, seed=11))
    rotation, rot_metrics = train_head("rotation", toy_task.model.features, images, iters=300, seed=0, bank_size=32)
    contrastive, con_metrics = train_head("contrastive", toy_task.model.features, images, iters=300, seed=0,
                                          bank_size=32)
    return {"rotation": (rotation, rot_metrics), "contrastive": (contrastive, con_metrics)}


def fingerprint(model):
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest(), [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


def test_registered_by_name():
    assert {"rotation", "contrastive"} <= set(DEFENSES.names())
    assert DEFENSES.get("rotation") is RotationDefense and DEFENSES.get("contrastive") is ContrastiveDefense


def chance_tail(hits: int, trials: int, chance: float) -> float:
    """P(at least ``hits`` of ``trials`` right by guessing): the one-sided binomial test's p-value."""
    return sum(math.comb(trials, k) * chance ** k * (1 - chance) ** (trials - k) for k in range(hits, trials + 1))


@pytest.mark.numerics
def test_heads_learn_their_task_above_chance(heads):
    """Above chance by a one-sided binomial test at the 5% level on the held-out images (8: the rotation head
    answers 4 turns of each, the contrastive head picks each image's other view among the 8): at least 13 of 32
    and 4 of 8, whatever the CPU's last bits (a fixed accuracy bar from one machine's run failed on another)."""
    _, rot = heads["rotation"]
    _, con = heads["contrastive"]
    assert rot["chance"] == 0.25 and rot["held_out_images"] == 8 and con["chance"] == pytest.approx(1 / 8)
    rot_hits, con_hits = round(rot["value"] * 32), round(con["value"] * 8)
    assert chance_tail(rot_hits, 32, 0.25) < 0.05, rot
    assert chance_tail(con_hits, 8, 1 / 8) < 0.05, con
    assert heads["contrastive"][0].bank.shape == (32, 64)


def test_the_chance_tail_is_the_binomial_tail():
    assert chance_tail(0, 8, 1 / 8) == pytest.approx(1.0)
    assert chance_tail(8, 8, 0.5) == pytest.approx(0.5 ** 8)
    assert chance_tail(4, 8, 1 / 8) == pytest.approx(0.0112478, abs=1e-7)  # so 4 of 8 passes at 5%, 3 of 8 does not
    assert chance_tail(3, 8, 1 / 8) > 0.05


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["rotation", "contrastive"])
def test_stays_in_budget_raises_its_objective_and_leaves_the_model_alone(kind, heads, toy_task):
    model, images = toy_task.model, oriented_scenes(4, seed=12)
    images[0, :, :4] = 255.0  # saturated pixels: the pixel range must clip
    original = images.clone()
    before_model = fingerprint(model)
    defense = build_defense(dict(type=kind, head=heads[kind][0], steps=6, eps_v=6, step_size=1.5, optimizer="sgd",
                                   transforms_per_step="all"))
    out = defense(images, model.features, model=model)
    assert torch.equal(images, original) and fingerprint(model) == before_model
    assert (out.images - images).abs().max() <= 6 + 1e-4 and out.images.min() >= 0 and out.images.max() <= 255
    before, after = defense.score(images, model.features), defense.score(out.images, model.features)
    # Both objectives are mean log-probabilities, at most 0: each image closes a good part of its distance to
    # that maximum (measured here: 58-100%). A fixed margin fails on images that start near 0 (a rotation image
    # at -0.043 can rise by 0.043 at most) and encodes one CPU's last bits.
    assert (before < 0).all() and (after - before > 0.25 * -before).all(), (before, after)
    torch.testing.assert_close(out.score, after)
    assert out.loss_trace.shape == (6, 4) and out.loss_trace[0].allclose(before)
    again = build_defense(dict(type=kind, head=heads[kind][0], steps=6, eps_v=6, step_size=1.5, optimizer="sgd",
                                   transforms_per_step="all"))
    assert torch.equal(again(images, model.features, model=model).images, out.images)


def test_rotation_terms_are_log_likelihoods_of_the_applied_turns(heads, toy_task):
    f, head = toy_task.model.features, heads["rotation"][0]
    x = oriented_scenes(2, seed=13)[:, :, :, :40]  # non-square: odd turns change the shape
    expected = torch.stack([head(f(Rot90(k).apply(x))).log_softmax(dim=1)[:, k] for k in range(4)], dim=1).mean(1)
    torch.testing.assert_close(RotationDefense(head=head).score(x, f), expected)


def test_contrastive_terms_are_info_nce_against_the_bank(heads, toy_task):
    f, head = toy_task.model.features, heads["contrastive"][0]
    x = oriented_scenes(2, seed=14)
    views = [HFlip(), Resize(0.75)]
    anchor = head(f(x))
    logits = []
    for t in views:
        z = head(f(t.apply(x)))
        logits.append(torch.cat([(z * anchor).sum(1, keepdim=True), anchor @ head.bank.T], dim=1) / head.temperature)
    expected = torch.stack([lg.log_softmax(dim=1)[:, 0] for lg in logits], dim=1).mean(1)
    torch.testing.assert_close(ContrastiveDefense(head=head, transforms=["hflip", "resize:0.75"]).score(x, f), expected)


def test_info_nce_and_nt_xent_values():
    anchor = torch.eye(3)[:1]
    views = torch.eye(3)[None, :2]  # one view equal to the anchor, one orthogonal
    negatives = torch.eye(3)[1:]
    terms = info_nce_terms(anchor, views, negatives, temperature=0.5)
    torch.testing.assert_close(terms, torch.tensor([[2 - math.log(math.exp(2) + 2), -math.log(3)]]))
    z = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    assert nt_xent(z, z, 0.1) < nt_xent(z, z.roll(1, dims=0), 0.1)


def test_save_load_round_trip(heads, tmp_path):
    for kind, (head, metrics) in heads.items():
        path = tmp_path / f"{kind}.pth"
        save_head(head, path, metrics)
        loaded = load_head(path, kind=kind)
        assert loaded.metadata() == head.metadata() and not loaded.training
        assert all(not p.requires_grad for p in loaded.parameters())
        maps = torch.randn(3, head.in_channels[0], 5, 6)
        torch.testing.assert_close(loaded(maps), head(maps))
        assert torch.equal(loaded.bank, head.bank)
        assert repr(str(path)) in repr(build_defense(dict(type=kind, head=str(path))))


def test_missing_wrong_and_mismatched_heads_fail_clearly(heads, tmp_path, toy_task):
    with pytest.raises(FileNotFoundError, match=r"SSL head file '.*nope\.pth' does not exist"):
        RotationDefense(head=tmp_path / "nope.pth")
    save_head(heads["contrastive"][0], tmp_path / "c.pth")
    with pytest.raises(ValueError, match="holds a 'contrastive' head; the 'rotation' defense needs a 'rotation' head"):
        RotationDefense(head=str(tmp_path / "c.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not an SSL head file"):
        ContrastiveDefense(head=tmp_path / "junk.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is not an SSL head file"):
        ContrastiveDefense(head=tmp_path / "other.pth")
    with pytest.raises(ValueError, match="needs head=PATH"):
        build_defense(dict(type="rotation", head=""))
    with pytest.raises(ValueError, match="does not support chunked=True"):
        RotationDefense(head=heads["rotation"][0], chunked=True)
    with pytest.raises(TypeError, match="head must be a path or an SSLHead"):
        RotationDefense(head=3)
    with pytest.raises(ValueError, match="has no bank"):
        ContrastiveDefense(head=SSLHead("contrastive", [24]))
    other = SSLHead("rotation", [16, 8], feature_spec="mmseg:backbone")
    save_head(other, tmp_path / "r16.pth")
    defense = RotationDefense(head=tmp_path / "r16.pth", steps=1)
    with pytest.raises(ValueError, match=r"r16\.pth' was trained on 2 feature map\(s\) with channels \[16, 8\] "
                                         r"\(mmseg:backbone\), but the model's features have 1 map\(s\) with "
                                         r"channels \[24\]"):
        defense(oriented_scenes(1, seed=15), toy_task.model.features)


def test_training_input_errors(toy_task):
    images = list(oriented_scenes(3, seed=16))
    with pytest.raises(ValueError, match="kind must be one of"):
        train_head("jigsaw", toy_task.model.features, images)
    with pytest.raises(ValueError, match="held_out must be a fraction"):
        train_head("rotation", toy_task.model.features, images, held_out=1.5)
    with pytest.raises(ValueError, match="need at least 4 images"):
        train_head("rotation", toy_task.model.features, images)
