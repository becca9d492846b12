"""Initialise each student mixer from the teacher's attention weights.

Every function takes the teacher layer's attention tensors ``att`` (keys as in the student's attention layer:
``q_proj.weight`` ``[H*D, hidden]``, ``k_proj.weight``/``v_proj.weight`` ``[Hkv*D, hidden]``, ``o_proj.weight``,
optional biases and Qwen3 ``q_norm``/``k_norm``) and returns the student mixer's tensors by parameter name.
Parameters a recipe leaves at their default initialisation are not returned.

Recipes:

* **MLA** — rotary pairs split into a RoPE part and a NoPE part (MHA2MLA's partial RoPE); the NoPE keys and the
  values of all query heads (head-repeated GQA) are factorised together by one SVD into the latent (joint SVD, as
  MHA2MLA's SVD_joint and X-EcoMLA); the RoPE key is the teacher's RoPE rows, per rope head: averaged over the KV
  heads it covers (X-EcoMLA with ``mla_rope_heads=1``) or kept per KV head (MHA2MLA, ``mla_rope_heads=Hkv``).
  Which pairs stay rotary: ``"qk_norm"`` (default; MHA2MLA's 2-norm criterion, scored from the weights as
  Σ_heads ‖W_q rows of the pair‖·‖W_k rows of the pair‖), ``"high_frequency"`` (the first pairs, MHA2MLA's
  S_high), ``"uniform"`` (evenly spaced, S_uniform). With every pair rotary, one rope head per KV head and the
  full rank, the layer is the teacher's attention exactly.
* **Mamba2** — Mamba-in-the-Llama / Zebra-Llama: x←W_v, B←W_k, C←W_q (one SSM head per attention head,
  d_state = head_dim, x and B kept at the KV-head count and repeated at run time), out_proj←W_o; the z gate and
  dt projections keep their random init (as the recipe), A_log = log U(1, 16), dt log-uniform in [1e-3, 1e-1]
  through dt_bias, D = 1, and the convolution starts as the identity (last tap 1) so the first forward sees the
  teacher's projections. One departure, measured in tests/upcycle: a randomly initialised gate multiplies every
  channel by an input-dependent factor of random sign and erases what the Q/K/V/O mapping carries (cosine to
  the teacher's attention output ≈ 0, no better than a random layer). The student therefore gets a gate bias
  (``mamba_gate_bias``) with the z rows at zero and the bias at silu⁻¹(1): the gate starts neutral and learns.
* **GDN** — hybrid-distillation mapping (RAD / Jet-Nemotron style): q←W_q, k←W_k and v←W_v repeated to the query
  head count (the kernel needs q/k and v heads aligned), o←W_o; a/b projections, A_log, dt_bias keep fla's
  default init; convolutions start as the identity; the output gate starts neutral as for Mamba2 (``g_proj``
  weight zero, bias silu⁻¹(1), ``gdn_gate_bias``).
"""

from __future__ import annotations

import torch

from ..config import HyLoConfig

PAIR_STRATEGIES = ("qk_norm", "high_frequency", "uniform")


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    # Float64 on CPU keeps the full-rank reconstruction exact to ~1e-12; float32 is plenty (and fast) on GPUs.
    return torch.float64 if t.device.type == "cpu" else torch.float32


def _heads(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """``[heads*D, hidden]`` -> ``[heads, D, hidden]``."""
    return weight.reshape(heads, -1, weight.shape[-1])


def select_rope_pairs(att: dict[str, torch.Tensor], config: HyLoConfig, strategy: str = "qk_norm") -> list[int]:
    """Which of the teacher's ``head_dim/2`` rotary pairs keep RoPE (``qk_rope_head_dim/2`` of them, sorted)."""
    half = config.head_dim // 2
    keep = config.qk_rope_head_dim // 2
    if strategy not in PAIR_STRATEGIES:
        raise ValueError(f"rope pair strategy {strategy!r} is unknown; allowed: {', '.join(PAIR_STRATEGIES)}")
    if keep == half:
        return list(range(half))
    if strategy == "high_frequency":
        return list(range(keep))
    if strategy == "uniform":
        return sorted({round(i * half / keep) for i in range(keep)})
    q = _heads(att["q_proj.weight"].float(), config.num_attention_heads)
    k = _heads(att["k_proj.weight"].float(), config.num_key_value_heads)
    q_pair = (q[:, :half].pow(2).sum(-1) + q[:, half:].pow(2).sum(-1)).sqrt()  # [H, half]
    k_pair = (k[:, :half].pow(2).sum(-1) + k[:, half:].pow(2).sum(-1)).sqrt()  # [Hkv, half]
    k_pair = k_pair.repeat_interleave(config.num_attention_heads // config.num_key_value_heads, dim=0)
    score = (q_pair * k_pair).sum(0)
    return sorted(score.topk(keep).indices.tolist())


def mla_weights(
    att: dict[str, torch.Tensor], config: HyLoConfig, layer_idx: int, pairs: list[int], svd: str = "joint"
) -> dict[str, torch.Tensor]:
    """MLA tensors for one layer (see the module docstring). ``svd="split"`` factorises keys and values
    separately, each into half of the latent (MHA2MLA's SVD_split)."""
    heads, kv_heads, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    rope_heads, rank = config.mla_rope_heads, config.layer_kv_lora_rank(layer_idx)
    if config.qk_nope_head_dim + config.qk_rope_head_dim != d or config.v_head_dim != d:
        raise ValueError(
            f"MLA upcycling needs qk_nope_head_dim + qk_rope_head_dim == v_head_dim == head_dim ({d}); got "
            f"{config.qk_nope_head_dim} + {config.qk_rope_head_dim}, v_head_dim={config.v_head_dim}"
        )
    if kv_heads % rope_heads:
        raise ValueError(f"mla_rope_heads={rope_heads} must divide the teacher's num_key_value_heads={kv_heads}")
    max_rank = kv_heads * (config.qk_nope_head_dim + d)
    if svd not in ("joint", "split"):
        raise ValueError(f"svd must be 'joint' or 'split', got {svd!r}")
    if rank > min(max_rank, config.hidden_size):
        raise ValueError(
            f"layer {layer_idx}: kv_lora_rank {rank} exceeds what the teacher's K/V allow "
            f"(max {min(max_rank, config.hidden_size)} = min(hidden_size, num_key_value_heads * "
            f"(qk_nope_head_dim + head_dim)))"
        )
    half = d // 2
    nope_pairs = [p for p in range(half) if p not in set(pairs)]
    rope_idx = torch.tensor(pairs + [p + half for p in pairs], dtype=torch.long)
    nope_idx = torch.tensor(nope_pairs + [p + half for p in nope_pairs], dtype=torch.long)
    perm = torch.cat([nope_idx, rope_idx])
    group = heads // kv_heads
    work = _work_dtype(att["q_proj.weight"])
    out: dict[str, torch.Tensor] = {}

    q = _heads(att["q_proj.weight"].to(work), heads)[:, perm].reshape(heads * d, -1)
    q_bias = att["q_proj.bias"].to(work).view(heads, d)[:, perm].reshape(-1) if "q_proj.bias" in att else None
    if config.q_lora_rank is None:
        out["q_proj.weight"] = q
        if q_bias is not None:
            out["q_proj.bias"] = q_bias
    else:
        up, down = _low_rank(q, config.q_lora_rank)
        out["q_a_proj.weight"], out["q_b_proj.weight"] = down, up
        if q_bias is not None:
            # q = W_b (W_a x + b_a): the best b_a in least squares is W_b^+ b_q.
            out["q_a_proj.bias"] = torch.linalg.lstsq(up, q_bias[:, None]).solution[:, 0]
    if "q_norm.weight" in att:
        out["q_norm.weight"] = att["q_norm.weight"].to(work)[perm]

    k = _heads(att["k_proj.weight"].to(work), kv_heads)
    v = _heads(att["v_proj.weight"].to(work), kv_heads)
    k_norm = att.get("k_norm.weight")
    k_nope = k[:, nope_idx]
    if k_norm is not None:
        # Qwen3 normalises each key head; the elementwise weight folds into the NoPE rows, the 1/rms factor is
        # only kept for the RoPE part (exact when every pair is rotary).
        k_nope = k_nope * k_norm.to(work)[nope_idx][None, :, None]
    k_nope, v_rep = k_nope.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
    joint = torch.cat([k_nope, v_rep], dim=1)  # [H, dn + D, hidden]
    if svd == "joint":
        up, down = _low_rank(joint.reshape(-1, joint.shape[-1]), rank)
    else:
        k_up, k_down = _low_rank(k_nope.reshape(-1, k_nope.shape[-1]), rank // 2)
        v_up, v_down = _low_rank(v_rep.reshape(-1, v_rep.shape[-1]), rank - rank // 2)
        dn = k_nope.shape[1]
        up = torch.zeros(heads, dn + d, rank, dtype=work)
        up[:, :dn, : rank // 2] = k_up.view(heads, dn, -1)
        up[:, dn:, rank // 2 :] = v_up.view(heads, d, -1)
        up, down = up.reshape(heads * (dn + d), rank), torch.cat([k_down, v_down])
    k_rope = k[:, rope_idx].reshape(rope_heads, kv_heads // rope_heads, len(rope_idx), -1).mean(1)
    out["kv_a_proj_with_mqa.weight"] = torch.cat([down, k_rope.reshape(-1, k_rope.shape[-1])])
    out["kv_b_proj.weight"] = up
    if "k_proj.bias" in att:
        k_bias = att["k_proj.bias"].to(work).view(kv_heads, d)
        v_bias = att["v_proj.bias"].to(work).view(kv_heads, d)
        rope_bias = k_bias[:, rope_idx].reshape(rope_heads, -1, len(rope_idx)).mean(1).reshape(-1)
        out["kv_a_proj_with_mqa.bias"] = torch.cat([torch.zeros(rank, dtype=work), rope_bias])
        nope_bias = k_bias[:, nope_idx].repeat_interleave(group, 0)
        out["kv_b_proj.bias"] = torch.cat([nope_bias, v_bias.repeat_interleave(group, 0)], dim=1).reshape(-1)
    if k_norm is not None:
        out["k_norm.weight"] = k_norm.to(work)[rope_idx]
    out["o_proj.weight"] = att["o_proj.weight"].to(work)
    return out


def _low_rank(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``matrix [m, n] ≈ up [m, r] @ down [r, n]`` by truncated SVD, singular values split evenly."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    rank_avail = min(rank, s.shape[0])
    root = s[:rank_avail].sqrt()
    up = torch.zeros(matrix.shape[0], rank, dtype=matrix.dtype, device=matrix.device)
    down = torch.zeros(rank, matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    up[:, :rank_avail] = u[:, :rank_avail] * root
    down[:rank_avail] = root[:, None] * vh[:rank_avail]
    return up, down


def _neutral_gate_bias(like: torch.Tensor) -> torch.Tensor:
    """The bias b with silu(b) = 1, so a zero-weight gate multiplies by exactly one."""
    z = torch.tensor(1.0, dtype=torch.float64)
    for _ in range(50):  # Newton on z*sigmoid(z) - 1
        s = torch.sigmoid(z)
        z = z - (z * s - 1) / (s + z * s * (1 - s))
    return torch.full_like(like, z.item())


def _identity_conv(weight: torch.Tensor) -> torch.Tensor:
    """A depthwise causal convolution that passes its input through: ``[C, 1, K]`` with the last tap 1."""
    conv = torch.zeros_like(weight)
    conv[..., -1] = 1.0
    return conv


def mamba2_weights(
    att: dict[str, torch.Tensor], config: HyLoConfig, current: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Mamba-in-the-Llama mapping into the student's freshly initialised Mamba2 tensors ``current``."""
    heads, kv_heads, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    expected = dict(mamba_num_heads=heads, mamba_head_dim=d, mamba_d_state=d, mamba_n_groups=heads,
                    mamba_x_heads=kv_heads, mamba_b_groups=kv_heads)
    wrong = {k: getattr(config, k) for k, v in expected.items() if getattr(config, k) != v}
    if wrong:
        raise ValueError(f"Mamba2 upcycling needs {expected}; the student config has {wrong}")
    in_proj = current["in_proj.weight"].clone()
    d_inner, x_dim = heads * d, kv_heads * d
    dtype = in_proj.dtype
    start = d_inner
    in_proj[start : start + x_dim] = att["v_proj.weight"].to(dtype)
    start += x_dim
    in_proj[start : start + x_dim] = att["k_proj.weight"].to(dtype)
    start += x_dim
    in_proj[start : start + d_inner] = att["q_proj.weight"].to(dtype)
    weights = {
        "in_proj.weight": in_proj,
        "conv1d.weight": _identity_conv(current["conv1d.weight"]),
        "conv1d.bias": torch.zeros_like(current["conv1d.bias"]),
        "D": torch.ones_like(current["D"]),
        "out_proj.weight": att["o_proj.weight"].to(dtype),
    }
    if "z_bias" in current:
        in_proj[:d_inner] = 0
        weights["z_bias"] = _neutral_gate_bias(current["z_bias"])
    return weights


def gdn_weights(
    att: dict[str, torch.Tensor], config: HyLoConfig, current: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Hybrid-distillation mapping into the student's freshly initialised GDN tensors ``current``."""
    heads, kv_heads, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    expected = dict(gdn_num_heads=heads, gdn_num_v_heads=heads, gdn_head_k_dim=d, gdn_head_v_dim=d)
    wrong = {k: getattr(config, k) for k, v in expected.items() if getattr(config, k) != v}
    if wrong:
        raise ValueError(f"GDN upcycling needs {expected}; the student config has {wrong}")
    group = heads // kv_heads
    dtype = current["q_proj.weight"].dtype

    def repeated(name: str) -> torch.Tensor:
        return _heads(att[name], kv_heads).repeat_interleave(group, 0).reshape(heads * d, -1).to(dtype)

    weights = {
        "q_proj.weight": att["q_proj.weight"].to(dtype),
        "k_proj.weight": repeated("k_proj.weight"),
        "v_proj.weight": repeated("v_proj.weight"),
        "q_conv1d.weight": _identity_conv(current["q_conv1d.weight"]),
        "k_conv1d.weight": _identity_conv(current["k_conv1d.weight"]),
        "v_conv1d.weight": _identity_conv(current["v_conv1d.weight"]),
        "o_proj.weight": att["o_proj.weight"].to(dtype),
    }
    if "g_proj.bias" in current:
        weights["g_proj.weight"] = torch.zeros_like(current["g_proj.weight"])
        weights["g_proj.bias"] = _neutral_gate_bias(current["g_proj.bias"])
    return weights
