"""Experiment tracking through accelerate's trackers, and the run's opening line (processes, device)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hylo_model.train import run_recipe
from hylo_model.train.trainer import trackers
from tests.helpers import tiny_teacher
from tests.train.conftest import CORPUS, LAYOUT

RECIPE = {
    "name": "tracked",
    "data": {"sources": [{"path": str(CORPUS)}], "eval_fraction": 0.1, "shuffle_block": 8},
    "student": {"kv_lora_rank": 16, "qk_rope_head_dim": 8},
    "eval": {"sequences": 2},
    "stages": [{"kind": "align", "steps": 2, "seq_len": 32, "batch_size": 2, "lr": 3e-3},
               {"kind": "distill", "steps": 2, "seq_len": 32, "batch_size": 2, "lr": 1e-3}],
}


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files under ``folder`` (TFRecord framing: length, CRC, payload, CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_training_logs_every_step_to_tensorboard(tmp_path, tokenizer, capsys):
    assert trackers("auto") == ["tensorboard"]  # tensorboardX: the test extra installs it
    out = tmp_path / "run"
    result = run_recipe(tiny_teacher("llama"), LAYOUT, RECIPE, out, tokenizer=tokenizer, progress="lines",
                        log_with="tensorboard")
    assert "training on 1 process, device cpu" in capsys.readouterr().err
    scalars = _scalars(out / "tracking" / "tracked")
    # Steps count on across stages, so the stages follow each other on one axis.
    assert [step for step, _ in scalars["align/loss"]] == [1, 2]
    assert [step for step, _ in scalars["distill/loss"]] == [3, 4]
    assert [v for _, v in scalars["distill/loss"]] == pytest.approx(result.losses["distill"], rel=1e-6)
    assert "distill/heldout_kl" in scalars and "align/lr/mixers" in scalars


def test_tracker_names_are_checked():
    assert trackers(None) == [] and trackers("none") == []
    with pytest.raises(ValueError, match="unknown tracker 'tensorbored'; allowed: auto, none, .*tensorboard"):
        trackers("tensorbored")
    from accelerate.utils import is_wandb_available

    if not is_wandb_available():
        with pytest.raises(ValueError, match=r"tracker 'wandb' needs its package.*pip install wandb"):
            trackers("wandb")
