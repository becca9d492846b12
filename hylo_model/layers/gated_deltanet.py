"""Gated DeltaNet mixer with fla's parameter names: ``q_proj``, ``k_proj``, ``v_proj``, ``a_proj``, ``b_proj``,
``g_proj``, ``q_conv1d``/``k_conv1d``/``v_conv1d``, ``A_log``, ``dt_bias``, ``o_norm``, ``o_proj``.

Per token: q, k, v through short causal convolutions + SiLU; q, k L2-normalised; beta = sigmoid(b_proj x);
log-decay g = -exp(A_log) * softplus(a_proj x + dt_bias); the gated delta rule; per-head RMSNorm gated by
SiLU(g_proj x) (or a plain RMSNorm without the output gate); o_proj.

Without gradients the input projections run as one GEMM (:class:`~hylo_model.layers.packed.PackedLinears`), and a
decode step (one token per sequence after a prefill) takes a lean path: one convolution kernel for q, k and v
that updates their states in place during a static step, and on CUDA the gates computed inside fla's recurrent kernel.
"""

from __future__ import annotations

import torch
from torch import nn

from ..cache import HyLoCache
from ..config import HyLoConfig
from ..ops.conv import causal_conv1d, conv_step_group
from ..ops.gated_delta import decay_and_beta, fused_gates, gated_delta_rule, gated_delta_step
from .common import AttentionMask, GatedRMSNorm, RMSNorm, decay_init
from .packed import PackedLinears


class GatedDeltaNet(nn.Module):
    def __init__(self, config: HyLoConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.gdn_num_heads
        self.num_v_heads = config.gdn_num_v_heads
        self.head_k_dim = config.gdn_head_k_dim
        self.head_v_dim = config.gdn_head_v_dim
        self.key_dim = self.num_heads * self.head_k_dim
        self.value_dim = self.num_v_heads * self.head_v_dim
        self.chunk_size = config.gdn_chunk_size
        hidden, kernel = config.hidden_size, config.gdn_conv_kernel

        self.q_proj = nn.Linear(hidden, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.value_dim, bias=False)
        self.a_proj = nn.Linear(hidden, self.num_v_heads, bias=False)
        self.b_proj = nn.Linear(hidden, self.num_v_heads, bias=False)
        self.q_conv1d = nn.Conv1d(self.key_dim, self.key_dim, kernel, groups=self.key_dim, bias=False)
        self.k_conv1d = nn.Conv1d(self.key_dim, self.key_dim, kernel, groups=self.key_dim, bias=False)
        self.v_conv1d = nn.Conv1d(self.value_dim, self.value_dim, kernel, groups=self.value_dim, bias=False)
        a_log, dt_bias = decay_init(self.num_v_heads, 0.0)  # fla's defaults
        self.A_log, self.dt_bias = nn.Parameter(a_log), nn.Parameter(dt_bias)
        for name in ("A_log", "dt_bias"):
            getattr(self, name)._no_weight_decay = True
        if config.gdn_use_gate:
            self.g_proj = nn.Linear(hidden, self.value_dim, bias=config.gdn_gate_bias)
            self.o_norm = GatedRMSNorm(self.head_v_dim, config.rms_norm_eps, norm_before_gate=True)
        else:
            self.g_proj = None
            self.o_norm = RMSNorm(self.head_v_dim, config.rms_norm_eps)
        self.o_proj = nn.Linear(self.value_dim, hidden, bias=False)
        # The output gate joins the packed GEMM unless it alone has a bias.
        gate = [self.g_proj] if self.g_proj is not None and self.g_proj.bias is None else []
        self._inputs = PackedLinears([self.q_proj, self.k_proj, self.v_proj, self.a_proj, self.b_proj, *gate])

    def forward(
        self,
        hidden_states: torch.Tensor,
        *,
        attention_mask: AttentionMask,
        cache: HyLoCache | None = None,
        **_: object,
    ) -> torch.Tensor:
        """hidden_states ``[B, T, hidden]`` -> ``[B, T, hidden]``. Padded tokens (mask 0) leave the state as is."""
        bsz, seq_len, _ = hidden_states.shape
        valid = attention_mask.for_linear(seq_len)
        state = cache.state(self.layer_idx) if cache is not None else {}
        keep = cache is not None
        q, k, v, a, b, gate = self._project(hidden_states)
        if seq_len == 1 and valid is None and "conv_q" in state and not torch.is_grad_enabled():
            return self._step(q, k, v, a, b, gate, cache, state)

        def conv(name: str, x: torch.Tensor, module: nn.Conv1d) -> tuple[torch.Tensor, torch.Tensor | None]:
            if valid is not None:
                x = x * valid[..., None].to(x.dtype)
            return causal_conv1d(x, module.weight.squeeze(1), None, activation="silu",
                                 conv_state=state.get(name), output_final_state=keep)

        q, conv_q = conv("conv_q", q, self.q_conv1d)
        k, conv_k = conv("conv_k", k, self.k_conv1d)
        v, conv_v = conv("conv_v", v, self.v_conv1d)
        q = q.view(bsz, seq_len, self.num_heads, self.head_k_dim)
        k = k.view(bsz, seq_len, self.num_heads, self.head_k_dim)
        v = v.view(bsz, seq_len, self.num_v_heads, self.head_v_dim)

        g, beta = decay_and_beta(a, b, self.A_log, self.dt_bias)
        if valid is not None:
            beta = beta * valid[..., None]
            g = g * valid[..., None]
        o, recurrent = gated_delta_rule(
            q, k, v, g, beta, scale=self.head_k_dim**-0.5, initial_state=state.get("recurrent"),
            output_final_state=keep, use_qk_l2norm=True, chunk_size=self.chunk_size,
        )
        if keep:
            cache.set_state(self.layer_idx, conv_q=conv_q, conv_k=conv_k, conv_v=conv_v, recurrent=recurrent)
        return self._output(o, gate)

    def _project(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """q, k ``[B, T, key_dim]``, v and gate ``[B, T, value_dim]`` (gate None without ``g_proj``), a, b
        ``[B, T, HV]``: one packed GEMM when no gradient is needed, else each projection."""
        outputs = self._inputs(hidden_states)
        q, k, v, a, b = outputs[:5]
        if self.g_proj is None:
            return q, k, v, a, b, None
        return q, k, v, a, b, outputs[5] if len(outputs) > 5 else self.g_proj(hidden_states)

    def _step(self, q, k, v, a, b, gate, cache: HyLoCache, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """One token per sequence after a prefill, without gradients; inputs as :meth:`_project` returns them.
        In a static step (a CUDA-graph decode) the convolution and recurrent states are written in place."""
        bsz = q.shape[0]
        in_place = cache.static_keys is not None
        (q, conv_q), (k, conv_k), (v, conv_v) = conv_step_group(
            [q, k, v], [state["conv_q"], state["conv_k"], state["conv_v"]],
            [m.weight.squeeze(1) for m in (self.q_conv1d, self.k_conv1d, self.v_conv1d)], in_place=in_place)
        q = q.view(bsz, 1, self.num_heads, self.head_k_dim)
        k = k.view(bsz, 1, self.num_heads, self.head_k_dim)
        v = v.view(bsz, 1, self.num_v_heads, self.head_v_dim)
        scale = self.head_k_dim**-0.5
        if fused_gates(q):
            o, recurrent = gated_delta_step(q, k, v, a, b, self.A_log, self.dt_bias, scale=scale,
                                            initial_state=state["recurrent"],
                                            out_state=state["recurrent"] if in_place else None)
        else:
            g, beta = decay_and_beta(a, b, self.A_log, self.dt_bias)
            o, recurrent = gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=state["recurrent"],
                                            output_final_state=True, use_qk_l2norm=True)
        cache.set_state(self.layer_idx, conv_q=conv_q, conv_k=conv_k, conv_v=conv_v, recurrent=recurrent)
        return self._output(o, gate)

    def _output(self, o: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        """o ``[B, T, HV, V]`` -> normed (and gated) -> o_proj ``[B, T, hidden]``."""
        bsz, seq_len = o.shape[:2]
        if gate is not None:
            o = self.o_norm(o, gate.reshape(bsz, seq_len, self.num_v_heads, self.head_v_dim))
        else:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(bsz, seq_len, self.value_dim))
