"""Changing RoPE after a model is built (long-context stages).

HyLo keeps rotary frequencies in :class:`~hylo_model.layers.common.RopeFrequencies` objects derived from
``config.rope_parameters`` when the model is built: one shared by the attention layers (``model.model.rope``)
and one per MLA layer (its own RoPE dims, or a subset of the model's frequency pairs). :func:`set_rope_parameters`
updates the config and re-derives every one of them with the same functions the constructors use, so a model
changed in place computes exactly what a model built from the new config computes (a test holds the two equal).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..layers.common import rope_frequencies


def _normalised(rope_parameters: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    new = dict(rope_parameters)
    new.setdefault("rope_type", new.pop("type", "default"))
    # A change of scaling alone keeps the base frequency the model was trained with.
    new.setdefault("rope_theta", current.get("rope_theta", 10000.0))
    return new


def check_rope_parameters(config: Any, rope_parameters: dict[str, Any],
                          max_position_embeddings: int | None = None) -> dict[str, Any]:
    """The normalised parameters, after computing the frequencies once on a copy of ``config`` (raises
    ValueError naming what transformers' initialiser rejected)."""
    trial = copy.deepcopy(config)
    trial.rope_parameters = _normalised(rope_parameters, config.rope_parameters)
    if max_position_embeddings is not None:
        trial.max_position_embeddings = max(int(max_position_embeddings), config.max_position_embeddings)
    try:
        rope_frequencies(trial)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        raise ValueError(f"rope parameters {rope_parameters} are not usable: {type(error).__name__}: {error}") from None
    return trial.rope_parameters


def set_rope_parameters(model: Any, rope_parameters: dict[str, Any],
                        max_position_embeddings: int | None = None) -> None:
    """Give a :class:`~hylo_model.HyLoForCausalLM` new RoPE parameters (e.g. ``{"rope_type": "yarn", "factor":
    2.0, "original_max_position_embeddings": 32768}``) in place: config, attention and every MLA layer.
    ``max_position_embeddings`` raises the config's value (some RoPE types read it)."""
    config = model.config
    config.rope_parameters = check_rope_parameters(config, rope_parameters, max_position_embeddings)
    if max_position_embeddings is not None:
        config.max_position_embeddings = max(int(max_position_embeddings), config.max_position_embeddings)
    (model.model if hasattr(model, "model") else model).refresh_rope()


def set_teacher_rope(teacher: Any, rope_parameters: dict[str, Any],
                     max_position_embeddings: int | None = None) -> dict[str, Any]:
    """Give a transformers Llama/Qwen teacher (or a HyLo model) new RoPE parameters in place; returns the previous
    ``(rope_parameters, max_position_embeddings)`` as a dict for :func:`restore_teacher_rope`. The rotary module is
    rebuilt from the config and its frequencies kept in float32 whatever the teacher's dtype."""
    config = teacher.config
    previous = {"rope_parameters": dict(config.rope_parameters),
                "max_position_embeddings": config.max_position_embeddings}
    if getattr(config, "model_type", None) == "hylo":
        set_rope_parameters(teacher, rope_parameters, max_position_embeddings)
        return previous
    new = _normalised(rope_parameters, config.rope_parameters)
    config.rope_parameters = new
    if max_position_embeddings is not None:
        config.max_position_embeddings = max(int(max_position_embeddings), config.max_position_embeddings)
    _rebuild_rotary(teacher)
    return previous


def restore_teacher_rope(teacher: Any, previous: dict[str, Any]) -> None:
    if getattr(teacher.config, "model_type", None) == "hylo":
        teacher.config.max_position_embeddings = previous["max_position_embeddings"]
        set_rope_parameters(teacher, previous["rope_parameters"])
        return
    teacher.config.rope_parameters = dict(previous["rope_parameters"])
    teacher.config.max_position_embeddings = previous["max_position_embeddings"]
    _rebuild_rotary(teacher)


def _rebuild_rotary(teacher: Any) -> None:
    rotary = teacher.model.rotary_emb
    device = rotary.inv_freq.device
    with torch.device("cpu"):
        fresh = type(rotary)(config=teacher.config)
    teacher.model.rotary_emb = fresh.to(device)


__all__ = ["check_rope_parameters", "restore_teacher_rope", "set_rope_parameters", "set_teacher_rope"]
