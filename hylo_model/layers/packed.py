"""Several ``nn.Linear`` layers that read the same input, run as one GEMM when no gradient is needed.

A decode step multiplies one token per sequence by every projection of a mixer: six small GEMMs in a Gated DeltaNet
layer (q, k, v, a, b, gate), three in attention, two in MLA. Each is one kernel launch of a few microseconds, on the
host in an eager step and on the GPU in a replayed CUDA graph. fla and vLLM fuse them into one GEMM by storing one
``in_proj`` weight; here the parameters keep their own names (checkpoints, upcycling key maps and optimizers see
nothing new) and are *packed* instead: on first use their data moves into one contiguous buffer, each parameter
becoming a row block of it, so the fused GEMM reads the parameters themselves. Nothing is copied per call, no memory
is duplicated, and in-place updates (``load_state_dict``, optimizer steps) land in the buffer. Anything that replaces
a parameter's data (``model.to(...)``, ``load_state_dict(assign=True)``) undoes the packing; the next call notices it
from the addresses and packs again.

Packing is skipped, and the layers run one by one, when a gradient is needed (autograd must reach each parameter),
when a layer is not a plain ``nn.Linear`` (adapters, quantised layers) or carries hooks, and during a CUDA graph
capture (the buffer must exist before it; the warm-up steps that precede a capture pack it).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PackedLinears:
    """``linears`` (one input width, all with a bias or all without) as one GEMM: ``__call__(x)`` returns their
    outputs ``[..., out_i]`` in order, as strided views of one ``[..., sum(out_i)]`` result."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        self._linears = tuple(linears)
        self.sizes = [layer.out_features for layer in self._linears]
        if len({layer.in_features for layer in self._linears}) != 1:
            raise ValueError(f"packed linears must share their input width, got {[layer.in_features for layer in linears]}")
        if len({layer.bias is None for layer in self._linears}) != 1:
            raise ValueError("packed linears must all have a bias or all have none")

    def __getstate__(self) -> dict:
        return dict(self.__dict__)  # holds no tensors of its own: a deep copy re-packs the copied parameters

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.can_pack(x):
            return [layer(x) for layer in self._linears]
        weight, bias = self.packed()
        return list(F.linear(x, weight, bias).split(self.sizes, dim=-1))

    def can_pack(self, x: torch.Tensor) -> bool:
        """Whether one GEMM may serve ``x``: no gradient, plain hook-free ``nn.Linear`` layers."""
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        return all(type(layer) is nn.Linear and not layer._forward_hooks and not layer._forward_pre_hooks
                   for layer in self._linears)

    def parameters(self) -> list[nn.Parameter]:
        return [p for layer in self._linears for p in (layer.weight, layer.bias) if p is not None]

    def packed(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused weight ``[sum(out_i), in]`` and bias ``[sum(out_i)]`` (or None), viewing the parameters'
        own memory; packs them first when needed."""
        weights = [layer.weight for layer in self._linears]
        biases = [layer.bias for layer in self._linears] if self._linears[0].bias is not None else None
        if not (_is_packed(weights) and (biases is None or _is_packed(biases))):
            if weights[0].is_cuda and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("PackedLinears: the parameters must be packed before a CUDA graph capture "
                                   "(run the step once outside it)")
            _pack(weights)
            if biases is not None:
                _pack(biases)
        weight = _whole(weights, (sum(self.sizes), weights[0].shape[1]))
        return weight, (None if biases is None else _whole(biases, (sum(self.sizes),)))


def _is_packed(params: list[nn.Parameter]) -> bool:
    """Whether ``params`` are consecutive blocks of one contiguous storage, in order, of one dtype."""
    first = params[0]
    base = first.untyped_storage().data_ptr()
    if first.storage_offset() != 0 or not first.is_contiguous():
        return False
    expected = first.data_ptr()
    for param in params:
        # A parameter whose data was replaced cannot sit inside the storage the first one keeps alive, so the
        # address arithmetic plus one storage check on the first is enough.
        if param.data_ptr() != expected or param.dtype != first.dtype or not param.is_contiguous():
            return False
        expected += param.numel() * param.element_size()
    return base == first.data_ptr() and first.untyped_storage().nbytes() >= expected - base


def _pack(params: list[nn.Parameter]) -> None:
    with torch.no_grad():
        buffer = torch.cat([p.detach().reshape(-1) for p in params])
        offset = 0
        for param in params:
            param.data = buffer[offset : offset + param.numel()].view(param.shape)
            offset += param.numel()


def _whole(params: list[nn.Parameter], shape: tuple[int, ...]) -> torch.Tensor:
    """One tensor over the packed storage of ``params`` (checked by :func:`_is_packed`)."""
    first = params[0].detach()
    stride = (shape[1], 1) if len(shape) == 2 else (1,)
    return first.as_strided(shape, stride, 0)


__all__ = ["PackedLinears"]
