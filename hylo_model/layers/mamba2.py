"""Mamba2 (SSD) mixer with mamba_ssm's parameter names: ``in_proj`` (z, x, B, C, dt), ``conv1d``, ``dt_bias``,
``A_log``, ``D``, ``norm``, ``out_proj``.

One generalisation for upcycling from GQA (Mamba-in-the-Llama): ``mamba_xb_heads`` keeps x and B at the
teacher's KV-head count inside ``in_proj`` and the convolution, and repeats them to the SSM head count at run
time; without it the layer is mamba_ssm's ``Mamba2`` (x with H heads, B and C with ``n_groups`` groups).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import HyLoCache
from ..config import HyLoConfig
from ..ops.conv import causal_conv1d, conv_step
from ..ops.ssd import ssd
from .common import AttentionMask, GatedRMSNorm, decay_init


class Mamba2(nn.Module):
    def __init__(self, config: HyLoConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.mamba_num_heads
        self.head_dim = config.mamba_head_dim
        self.d_state = config.mamba_d_state
        self.x_heads = config.mamba_x_heads
        self.b_groups = config.mamba_b_groups
        self.c_groups = config.mamba_n_groups
        self.chunk_size = config.mamba_chunk_size
        self.d_inner = self.num_heads * self.head_dim
        self.x_dim = self.x_heads * self.head_dim
        self.conv_dim = self.x_dim + (self.b_groups + self.c_groups) * self.d_state
        hidden = config.hidden_size

        self.in_proj = nn.Linear(hidden, self.d_inner + self.conv_dim + self.num_heads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, config.mamba_conv_kernel, groups=self.conv_dim,
            padding=config.mamba_conv_kernel - 1, bias=True,
        )
        a_log, dt_bias = decay_init(self.num_heads, 1.0)  # mamba_ssm's defaults
        self.A_log, self.dt_bias = nn.Parameter(a_log), nn.Parameter(dt_bias)
        self.D = nn.Parameter(torch.ones(self.num_heads))
        self.norm = GatedRMSNorm(self.d_inner, config.rms_norm_eps, group_size=self.d_inner // self.c_groups)
        self.out_proj = nn.Linear(self.d_inner, hidden, bias=False)
        # Not in mamba_ssm: lets an upcycled layer start with silu(z) = 1 (z rows zero) and learn the gate.
        self.z_bias = nn.Parameter(torch.zeros(self.d_inner)) if config.mamba_gate_bias else None
        for name in ("A_log", "dt_bias", "D"):
            getattr(self, name)._no_weight_decay = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        *,
        attention_mask: AttentionMask,
        cache: HyLoCache | None = None,
        **_: object,
    ) -> torch.Tensor:
        """hidden_states ``[B, T, hidden]`` -> ``[B, T, hidden]``. Padded tokens (mask 0) neither write to nor
        decay the state, so a left-padded row computes what it would alone."""
        bsz, seq_len, _ = hidden_states.shape
        z, xbc, dt = self.in_proj(hidden_states).split([self.d_inner, self.conv_dim, self.num_heads], dim=-1)
        valid = attention_mask.for_linear(seq_len)
        if valid is not None:
            xbc = xbc * valid[..., None].to(xbc.dtype)

        state = cache.state(self.layer_idx) if cache is not None else {}
        if seq_len == 1 and valid is None and "conv" in state and not torch.is_grad_enabled():
            # A decode step: one kernel, writing the state in place during a static (CUDA-graph) step.
            xbc, conv_state = conv_step(xbc, state["conv"], self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                        in_place=cache.static_keys is not None)
        else:
            xbc, conv_state = causal_conv1d(
                xbc, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu",
                conv_state=state.get("conv"), output_final_state=cache is not None,
            )
        x, b, c = xbc.split([self.x_dim, self.b_groups * self.d_state, self.c_groups * self.d_state], dim=-1)
        x = x.view(bsz, seq_len, self.x_heads, self.head_dim)
        if self.x_heads != self.num_heads:
            x = x.repeat_interleave(self.num_heads // self.x_heads, dim=2)
        b = b.view(bsz, seq_len, self.b_groups, self.d_state)
        c = c.view(bsz, seq_len, self.c_groups, self.d_state)

        dt = F.softplus(dt.float() + self.dt_bias.float())
        if valid is not None:
            dt = dt * valid[..., None]
        y, ssm_state = ssd(
            x, dt, -torch.exp(self.A_log.float()), b, c, D=self.D,
            initial_state=state.get("ssm"), output_final_state=cache is not None, chunk_size=self.chunk_size,
        )
        if cache is not None:
            cache.set_state(self.layer_idx, conv=conv_state, ssm=ssm_state)
        if self.z_bias is not None:
            z = z + self.z_bias
        y = self.norm(y.reshape(bsz, seq_len, self.d_inner), z)
        return self.out_proj(y)
