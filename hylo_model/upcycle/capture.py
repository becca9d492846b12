"""What the frozen teacher computes inside, captured in one forward: the upcycling gates and the align stage both
feed each converted mixer the teacher's own input hidden state and compare with the teacher's attention output."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def _decoder_layers(teacher: nn.Module) -> nn.ModuleList:
    return teacher.model.layers


def _attention_of(layer: nn.Module) -> nn.Module:
    return layer.self_attn if hasattr(layer, "self_attn") else layer.mixer


@dataclass
class TeacherOutputs:
    """``last_hidden`` ``[B, T, H]`` (after the final norm); per captured layer i: ``inputs[i]`` (the hidden state
    entering layer i), ``attention[i]`` (its attention output), ``blocks[i]`` (the layer's output)."""

    last_hidden: torch.Tensor | None
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    attention: dict[int, torch.Tensor] = field(default_factory=dict)
    blocks: dict[int, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def teacher_pass(teacher: nn.Module, input_ids: torch.Tensor, layers: list[int] = (), *,
                 attention: bool = False, blocks: bool = False, all_blocks: bool = False,
                 attention_mask: torch.Tensor | None = None) -> TeacherOutputs:
    """One no_grad forward of the teacher (transformers Llama/Qwen, or a HyLo model) on ``input_ids`` ``[B, T]``,
    capturing with hooks the inputs (and attention / block outputs) of ``layers``."""
    out = TeacherOutputs(None)
    hooks = []
    decoder = _decoder_layers(teacher)
    wanted = range(len(decoder)) if all_blocks else layers
    for i in wanted:
        layer = decoder[i]
        if i in layers:
            hooks.append(layer.register_forward_pre_hook(
                lambda _m, args, kwargs, i=i: out.inputs.__setitem__(i, (args[0] if args else kwargs["hidden_states"])),
                with_kwargs=True))
            if attention:
                hooks.append(_attention_of(layer).register_forward_hook(
                    lambda _m, _a, res, i=i: out.attention.__setitem__(i, res[0] if isinstance(res, tuple) else res)))
        if blocks or all_blocks:
            hooks.append(layer.register_forward_hook(
                lambda _m, _a, res, i=i: out.blocks.__setitem__(i, res[0] if isinstance(res, tuple) else res)))
    try:
        result = teacher.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    out.last_hidden = result.last_hidden_state
    return out
