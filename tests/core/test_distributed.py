"""The tools' process-group teardown (see equi_ext.core.distributed)."""

import torch.distributed as dist

from equi_ext.core.distributed import close_process_group


def test_close_process_group_destroys_a_started_group_and_is_a_no_op_without_one(tmp_path):
    close_process_group()  # no group: nothing to do, no error
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        close_process_group()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
