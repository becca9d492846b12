"""One process of the two-process data-parallel test (started by torch.multiprocessing.spawn, gloo on localhost)."""

from __future__ import annotations

import os


def train(rank: int, world: int, port: int, teacher_dir: str, recipe: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    from hylo_model.train import make_accelerator, run_recipe
    from tests.train.conftest import LAYOUT

    accelerator = make_accelerator()
    assert accelerator.num_processes == world, accelerator.state
    result = run_recipe(teacher_dir, LAYOUT, recipe, accelerator=accelerator, progress="off")
    if rank == 0:
        torch.save({"losses": result.losses, "kl": result.heldout_kl,
                    "state": {k: v.clone() for k, v in result.model.state_dict().items()}}, out)
    accelerator.wait_for_everyone()
