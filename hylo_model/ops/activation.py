"""SwiGLU, ``silu(gate) * up`` (the Llama/Qwen MLP's activation): PyTorch (the reference, any device) and fla's
fused Triton kernel on CUDA, one pass over both inputs instead of a SiLU kernel and a multiply.

The fused kernel computes in float32 and rounds once; PyTorch rounds SiLU's output to the input dtype before the
multiply, so the two differ by about one rounding step of that dtype (the GPU test bounds it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backend

__all__ = ["swiglu"]


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``, elementwise; the inputs may be strided views of one packed GEMM output."""
    if gate.dtype == up.dtype and backend.use_fast("swiglu", gate, "fla.modules.activations") and \
            not backend.prefers_native():
        from fla.modules.activations import swiglu as fla_swiglu

        return fla_swiglu(gate, up)
    return F.silu(gate) * up
