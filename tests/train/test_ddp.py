"""Two processes (gloo, localhost, through accelerate) give the one-process result at the same global batch."""

from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp

from hylo_model.train import run_recipe
from tests.train.conftest import CORPUS, LAYOUT
from tests.train.ddp_worker import train

RECIPE = {
    "seed": 0,
    "data": {"sources": [{"path": str(CORPUS)}], "eval_fraction": 0.1, "shuffle_block": 8},
    "student": {"kv_lora_rank": 16, "qk_rope_head_dim": 8},
    "eval": {"sequences": 4},
    "stages": [
        {"kind": "align", "steps": 4, "seq_len": 32, "batch_size": 4, "micro_batch_size": 1, "lr": 3e-3},
        # Padded rows (pad packing) make the two halves of a global batch hold different token counts: the loss
        # is normalised by the global count, so this still matches one process.
        {"kind": "distill", "steps": 4, "seq_len": 32, "batch_size": 4, "micro_batch_size": 1, "ce_weight": 0.2,
         "lr": {"mixers": 1e-3, "mlp": 1e-4}, "data": {"sources": [{"path": str(CORPUS)}], "eval_fraction": 0.1,
                                                      "packing": "pad", "shuffle_block": 8}},
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_at_the_same_global_batch(teacher_dir, tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(train, args=(2, _free_port(), str(teacher_dir), RECIPE, str(out)), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    one = run_recipe(str(teacher_dir), LAYOUT, RECIPE, progress="off")
    state = one.model.state_dict()
    loss_diff = max(abs(a - b) for k in one.losses for a, b in zip(one.losses[k], two["losses"][k]))
    weight_diff = max(((state[k] - two["state"][k]).norm() / state[k].norm().clamp_min(1e-12)).item() for k in state)
    print(f"\n1 vs 2 processes: max |loss diff| {loss_diff:.2e}, max relative weight diff {weight_diff:.2e}, "
          f"held-out KL {one.heldout_kl:.6f} vs {two['kl']:.6f}")
    assert {k: len(v) for k, v in one.losses.items()} == {k: len(v) for k, v in two["losses"].items()}
    for stage, losses in one.losses.items():
        assert torch.allclose(torch.tensor(losses), torch.tensor(two["losses"][stage]), rtol=1e-4, atol=1e-6), stage
    for key, value in state.items():
        # Per tensor, relative to its norm: Adam divides by sqrt(v), so an element whose gradient is ~0 can move
        # by a visible fraction of the learning rate on float summation-order noise alone.
        assert ((value - two["state"][key]).norm() / value.norm().clamp_min(1e-12)).item() < 1e-4, key
    assert abs(one.heldout_kl - two["kl"]) <= 1e-4 * one.heldout_kl
