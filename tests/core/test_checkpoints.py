"""One strict checkpoint loader for both adapters: every accepted format loads exactly, every bad file is named."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from equi_ext.core.checkpoints import CheckpointError, load_weights, read_checkpoint


def model_pair():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    source[1].running_mean.uniform_()
    torch.manual_seed(1)
    return source, nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def assert_same_state(a: nn.Module, b: nn.Module, atol: float = 0.0) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert x.dtype == y.dtype, name
        torch.testing.assert_close(x.float(), y.float(), rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("framework, wrap", [
    ("MMEngine", lambda s: {"state_dict": s, "meta": {"iter": 3}}),
    ("Detectron2", lambda s: {"model": s, "iteration": 3}),
    ("Detectron2", lambda s: s),
    ("MMEngine", lambda s: {f"module.{k}": v for k, v in s.items()}),
])
def test_each_format_loads_every_tensor(tmp_path, framework, wrap):
    source, target = model_pair()
    torch.save(wrap(source.state_dict()), tmp_path / "w.pth")
    load_weights(target, tmp_path / "w.pth", framework=framework)
    assert_same_state(source, target)


def test_fp16_weights_load_into_the_fp32_model(tmp_path):
    source, target = model_pair()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}, tmp_path / "h.pth")
    load_weights(target, tmp_path / "h.pth", framework="Detectron2")
    assert_same_state(source, target, atol=2e-3)  # fp16 keeps 11 significant bits: |w| < 2 rounds by < 1e-3


def test_bad_files_are_named_and_leave_the_model_alone(tmp_path, caplog):
    source, target = model_pair()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(FileNotFoundError, match="checkpoint '.*missing.pth' does not exist"):
        load_weights(target, tmp_path / "missing.pth", framework="MMEngine")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "mm.pth")
    with pytest.raises(ValueError, match=r"holds no Detectron2 state dict .*\['state_dict'\] \(an MMEngine checkpoint"):
        load_weights(target, tmp_path / "mm.pth", framework="Detectron2")
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("1.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not match the model:\nmissing: 1.bias, 1.num_batches_tracked, "):
        load_weights(target, tmp_path / "partial.pth", framework="MMEngine")  # the layers it has are not copied either
    shapes = dict(source.state_dict(), **{"0.weight": torch.zeros(4, 3, 1, 1)})
    torch.save(shapes, tmp_path / "shapes.pth")
    with pytest.raises(ValueError, match=r"does not match the model:\n0.weight: checkpoint \(4, 3, 1, 1\), model \(4, 3, 3, 3\)"):
        load_weights(target, tmp_path / "shapes.pth", framework="MMEngine")
    with pytest.raises(ValueError, match="framework must be one of"):
        load_weights(target, tmp_path / "mm.pth", framework="mmseg")
    with caplog.at_level(logging.WARNING):
        load_weights(target, None, framework="MMEngine")
    assert "randomly initialised" in caplog.text
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


class MakesADirectory:
    """Pickles as a call to ``os.mkdir``: what a malicious checkpoint does with ``os.system``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return os.mkdir, (self.path,)


def test_a_checkpoint_cannot_run_code_and_unreadable_files_are_named(tmp_path):
    source, target = model_pair()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    marker = tmp_path / "ran"
    torch.save({"state_dict": source.state_dict(), "meta": {"hook": MakesADirectory(marker)}}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"names the Python object \S*mkdir, which loading would have to run as "
                                              r"code.*export_weights.py .*evil.pth WEIGHTS.pth --trust-source"):
        load_weights(target, tmp_path / "evil.pth", framework="MMEngine")
    assert not marker.exists()
    # Training state that is data, not code, still loads: NumPy arrays, scalars and dtypes beside the weights.
    torch.save({"state_dict": source.state_dict(), "meta": {"seed": np.int64(3), "hist": np.arange(3.0),
                                                            "dtype": np.dtype("float32")}}, tmp_path / "numpy.pth")
    load_weights(target, tmp_path / "numpy.pth", framework="MMEngine")
    assert_same_state(source, target)
    target.load_state_dict(before)
    good = (tmp_path / "numpy.pth").read_bytes()
    for name, content in (("empty.pth", b""), ("text.pth", b"not a checkpoint"), ("truncated.pth", good[:len(good) // 2])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"checkpoint '.*{name}' is not a readable PyTorch checkpoint"):
            read_checkpoint(tmp_path / name)
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickled_weights_are_read_as_data_before_an_unrestricted_loader_sees_them(tmp_path, protocol):
    """Detectron2's model-zoo .pkl files (NumPy arrays in dicts) pass; one that names code is refused unrun."""
    import collections
    import pickle

    from equi_ext.core.checkpoints import check_pickled_data

    weights = {"model": collections.OrderedDict(w=np.ones((2, 3), np.float32), n=np.arange(3), s=np.float64(2.5)),
               "__author__": "Detectron2 Model Zoo"}
    (tmp_path / "zoo.pkl").write_bytes(pickle.dumps(weights, protocol=protocol))
    check_pickled_data(tmp_path / "zoo.pkl")
    marker = tmp_path / "ran"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"model": weights["model"], "x": MakesADirectory(marker)},
                                                     protocol=protocol))
    with pytest.raises(CheckpointError, match=r"evil.pkl' names the Python object \S*mkdir, which loading would"):
        check_pickled_data(tmp_path / "evil.pkl")
    assert not marker.exists()
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "zoo.pkl").read_bytes()[:40])
    with pytest.raises(CheckpointError, match="cut.pkl' is not a readable pickle of weights"):
        check_pickled_data(tmp_path / "cut.pkl")


def test_export_weights_keeps_only_tensors_and_unpickles_code_only_when_trusted(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "equi_tools_export_weights", Path(__file__).resolve().parents[2] / "tools/export_weights.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    source, _ = model_pair()
    marker = tmp_path / "ran"
    torch.save({"state_dict": source.state_dict(), "meta": {"iter": 3, "hook": MakesADirectory(marker)}},
               tmp_path / "train.pth")
    with pytest.raises(SystemExit, match="names the Python object"):
        tool.main([str(tmp_path / "train.pth"), str(tmp_path / "out.pth")])
    assert not marker.exists() and not (tmp_path / "out.pth").exists()
    tool.main([str(tmp_path / "train.pth"), str(tmp_path / "out.pth"), "--trust-source"])
    assert marker.is_dir()  # trusted: the file's code ran, as the flag says
    exported = read_checkpoint(tmp_path / "out.pth")
    assert exported["meta"] == {"iter": 3} and set(exported["state_dict"]) == set(source.state_dict())
