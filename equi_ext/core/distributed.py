"""Process-group housekeeping shared by the MMSeg and Detectron2 tools."""

from __future__ import annotations

import torch


def close_process_group() -> None:
    """Wait for every process, then destroy the process group that ``torchrun ... --launcher
    pytorch`` or Detectron2's ``launch`` started.

    A rank that simply exits while the gloo group is alive (rank 1 returns as soon as the
    results are gathered, while rank 0 still writes files) can abort in the C++ teardown
    ("terminate called without an active exception", SIGABRT), which torchrun reports as a
    failed run although every metric was computed. A no-op for single-process runs.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
