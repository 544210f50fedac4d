"""Strict checkpoint loading, one implementation for both adapters.

A checkpoint that does not fit the model is an error, never a warning with half the weights
random: evaluating a defense on a silently mis-loaded model would report numbers of another model.
"""

from __future__ import annotations

import logging
import os
import pickle
import re

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Where each framework's checkpoints keep the state dict, and what to do with one given to the other.
STATE_KEYS = {"MMEngine": "state_dict", "Detectron2": "model"}
OTHER_FORMAT_HINTS = {"MMEngine": "an MMEngine checkpoint: evaluate it with its MMSeg .py config",
                      "Detectron2": "a Detectron2 checkpoint: evaluate it with its .yaml config"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely, holds no state dict of the expected framework, or does not
    fit the model."""


def training_state_types() -> list:
    """Types a training checkpoint holds besides tensors, containers and numbers, each rebuilt from its data
    without running code of the file's choosing: NumPy arrays, scalars and dtypes (NumPy 1 and 2), and
    MMEngine's ``HistoryBuffer`` (its message hub's logs) where MMEngine is installed."""
    types = [np.ndarray, np.dtype, np.ndarray((1,)).__reduce__()[0], np.float64(0).__reduce__()[0], getattr,
             *{type(np.dtype(name)) for name in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")}]
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
    except ImportError:
        return types
    return [*types, HistoryBuffer]


def read_checkpoint(path: str | os.PathLike, *, trust: bool = False):
    """The object in the checkpoint file ``path``, unpickled without running its code: tensors, containers,
    numbers, strings and ``training_state_types()`` only (``torch.load(weights_only=True)``). ``trust`` unpickles
    anything, which runs whatever code the file names: only for files you made or trust.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file names other Python objects (the message says which, and how to keep only its
            weights if you trust it), or it is not a readable PyTorch checkpoint (truncated, another format).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        if trust:
            logger.warning("unpickling %s without restrictions (trusted): any code it names runs now", path)
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(training_state_types()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"GLOBAL (\S+)", str(err))
        if unsafe and not trust:
            raise CheckpointError(
                f"checkpoint {path!r} names the Python object {unsafe.group(1)}, which loading would have to run as "
                "code; equi-ext loads only tensors, numbers, containers and training state. If you trust the file, "
                f"keep only its weights: python tools/export_weights.py {path} WEIGHTS.pth --trust-source") from None
        raise CheckpointError(f"checkpoint {path!r} is not a readable PyTorch checkpoint: {err}") from None
    except (EOFError, RuntimeError, ValueError, OSError) as err:  # empty, truncated, not a zip or pickle
        raise CheckpointError(f"checkpoint {path!r} is not a readable PyTorch checkpoint (truncated, or another "
                              f"format): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None


#: What a pickle of weights as NumPy arrays (Detectron2's model-zoo ``.pkl``) may name: array, dtype and scalar
#: constructors (NumPy 1 and 2), ordered dicts and the bytes codec of protocol-2 pickles.
PICKLE_DATA_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"), ("_codecs", "encode"),
                       *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                         for name in ("_reconstruct", "scalar"))}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in PICKLE_DATA_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise CheckpointError(f"{module}.{name}")


def check_pickled_data(path: str | os.PathLike) -> None:
    """Read the pickle file ``path`` allowing only NumPy arrays, numbers, strings and containers, so a file that
    names any other Python object is refused before a loader that unpickles without restriction (Detectron2's
    ``DetectionCheckpointer`` for ``.pkl`` weights) gets to run it.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file names another Python object (which one), or is not a readable pickle.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            _DataOnlyUnpickler(f, encoding="latin1").load()
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {path!r} names the Python object {err}, which loading would have to run "
                              "as code; equi-ext loads .pkl weights only when they hold NumPy arrays, numbers, "
                              "strings and containers") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise CheckpointError(f"checkpoint {path!r} is not a readable pickle of weights: {type(err).__name__}: "
                              f"{err}") from None


def load_weights(model: nn.Module, checkpoint: str | os.PathLike | None, *, framework: str) -> None:
    """Load ``checkpoint`` into ``model`` strictly.

    Takes ``framework``'s checkpoints (``STATE_KEYS``) and bare state dicts, in fp32 or fp16 (copied
    into the model's dtype), ``module.`` prefixes of wrapped models stripped. ``None`` keeps the
    model's initialisation, with a warning. The file is read by :func:`read_checkpoint`, which runs none of
    its code.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError (a ValueError): the file cannot be read safely (:func:`read_checkpoint`), holds no state dict of tensors (the message names the other framework's
            format when it is one), or its keys or shapes do not match the model.
    """
    if framework not in STATE_KEYS:
        raise ValueError(f"framework must be one of {sorted(STATE_KEYS)}; got {framework!r}")
    if checkpoint is None or str(checkpoint) == "":
        logger.warning("no checkpoint given: evaluating randomly initialised weights")
        return
    path = os.fspath(checkpoint)
    ckpt = read_checkpoint(path)
    state = ckpt.get(STATE_KEYS[framework], ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, (torch.Tensor, np.ndarray))
                                                            for v in state.values()):
        other = [name for name, key in STATE_KEYS.items() if name != framework and isinstance(ckpt, dict) and key in ckpt]
        hint = f" ({OTHER_FORMAT_HINTS[other[0]]})" if other else ""
        found = sorted(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint {path!r} holds no {framework} state dict (a {STATE_KEYS[framework]!r} mapping "
                         f"of tensors); found keys {found}{hint}")
    state = {k.removeprefix("module."): torch.as_tensor(v) for k, v in state.items()}
    model = getattr(model, "module", model)
    # Checked before loading: a strict load_state_dict copies every matching tensor before it raises.
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [f"missing: {', '.join(sorted(expected.keys() - state.keys()))}" if expected.keys() - state.keys() else "",
                f"unexpected: {', '.join(sorted(state.keys() - expected.keys()))}" if state.keys() - expected.keys() else "",
                "; ".join(f"{k}: checkpoint {tuple(state[k].shape)}, model {shape}" for k, shape in expected.items()
                          if k in state and tuple(state[k].shape) != shape)]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(f"checkpoint {path!r} does not match the model:\n" + "\n".join(problems))
    model.load_state_dict(state, strict=True)
