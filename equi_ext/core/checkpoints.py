"""Strict checkpoint loading, one implementation for both adapters.

A checkpoint that does not fit the model is an error, never a warning with half the weights
random: evaluating a defense on a silently mis-loaded model would report numbers of another model.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Where each framework's checkpoints keep the state dict, and what to do with one given to the other.
STATE_KEYS = {"MMEngine": "state_dict", "Detectron2": "model"}
OTHER_FORMAT_HINTS = {"MMEngine": "an MMEngine checkpoint: evaluate it with its MMSeg .py config",
                      "Detectron2": "a Detectron2 checkpoint: evaluate it with its .yaml config"}


class CheckpointError(ValueError):
    """A checkpoint file that holds no state dict of the expected framework, or one that does not fit the model."""


def load_weights(model: nn.Module, checkpoint: str | os.PathLike | None, *, framework: str) -> None:
    """Load ``checkpoint`` into ``model`` strictly.

    Takes ``framework``'s checkpoints (``STATE_KEYS``) and bare state dicts, in fp32 or fp16 (copied
    into the model's dtype), ``module.`` prefixes of wrapped models stripped. ``None`` keeps the
    model's initialisation, with a warning. Checkpoints are full pickles (MMEngine's carry more than
    tensors, which ``weights_only=True`` refuses): load only files you trust.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError (a ValueError): the file holds no state dict of tensors (the message names the other framework's
            format when it is one), or its keys or shapes do not match the model.
    """
    if framework not in STATE_KEYS:
        raise ValueError(f"framework must be one of {sorted(STATE_KEYS)}; got {framework!r}")
    if checkpoint is None or str(checkpoint) == "":
        logger.warning("no checkpoint given: evaluating randomly initialised weights")
        return
    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
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
