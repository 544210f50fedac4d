"""Start one process per worker for the Detectron2 tools, on GPUs or on the CPU.

Detectron2's ``launch`` runs several processes on GPUs with NCCL; in 0.6 (the release PyPI's
``pb1-detectron2`` sdist carries) it asserts that CUDA is available. On a CPU-only machine this module
starts the processes itself over gloo on localhost, with the same per-process setup Detectron2 does
(global group, a local group per machine, a barrier before ``main_func``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm


def launch(main_func: Callable[..., Any], num_processes: int, *, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", args: tuple = ()) -> None:
    """Run ``main_func(*args)`` in ``num_processes`` processes per machine (in this one if the total is 1)."""
    if num_processes < 1 or num_machines < 1:
        raise ValueError(f"need at least one process and one machine; got {num_processes} x {num_machines}")
    if torch.cuda.is_available():
        detectron2_launch(main_func, num_processes, num_machines=num_machines, machine_rank=machine_rank,
                          dist_url=dist_url, args=args)
        return
    if num_processes * num_machines == 1:
        main_func(*args)
        return
    if num_machines != 1:
        raise ValueError(f"CPU processes run on one machine here; got --num-machines {num_machines} "
                         "(use torchrun-style launchers for several CPU machines)")
    if dist_url == "auto":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            dist_url = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    mp.spawn(_cpu_worker, nprocs=num_processes, args=(main_func, num_processes, dist_url, args), daemon=False)


def _cpu_worker(rank: int, main_func: Callable[..., Any], world_size: int, dist_url: str, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank)
    if hasattr(comm, "create_local_process_group"):  # detectron2 after 0.6
        comm.create_local_process_group(world_size)
    else:  # 0.6 keeps the machine-local group in a module global, set by its own launch in the same way
        comm._LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))
    comm.synchronize()
    main_func(*args)


@contextlib.contextmanager
def cpu_ddp() -> Iterator[None]:
    """While active, Detectron2's ``create_ddp_model`` wraps a model whose parameters are on the CPU in
    DistributedDataParallel without device ids, so ``DefaultTrainer`` trains over several CPU processes
    (Detectron2 passes ``device_ids=[local rank]``, which torch refuses for a CPU module). Restored on exit."""
    from detectron2.engine import defaults

    stock = defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        if not any(p.is_cuda for p in model.parameters()):
            kwargs.setdefault("device_ids", None)
        return stock(model, **kwargs)

    defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        defaults.create_ddp_model = stock
