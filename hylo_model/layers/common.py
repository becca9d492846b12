"""Pieces every mixer shares: RMSNorms, rotary helpers, and the attention kernel call with the right mask."""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import CausalBias, causal_lower_right
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ..ops import backend
from ..ops.attention import BLOCK_SIZE, causal_mask, chunked_attention
from ..ops.norm import gated_rms_norm, rms_norm


def decay_init(heads: int, low: float, *, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_log, dt_bias)`` as mamba_ssm (A ~ U(1, 16)) and fla (A ~ U(0, 16)) draw them: A ~ U(low, 16), dt
    log-uniform in [1e-3, 1e-1] (floored at 1e-4) stored as softplus⁻¹(dt)."""
    options = {"device": like.device, "dtype": like.dtype} if like is not None else {}
    a_log = torch.log(torch.empty(heads, **options).uniform_(low, 16))
    dt = torch.exp(torch.rand(heads, **options) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    dt = dt.clamp(min=1e-4)
    return a_log, dt + torch.log(-torch.expm1(-dt))


class RMSNorm(nn.Module):
    """Llama/Qwen RMSNorm (float32 statistics, weight applied in the input dtype); fused on CUDA
    (:mod:`hylo_model.ops.norm`)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)


class GatedRMSNorm(nn.Module):
    """``rmsnorm(x * silu(z))`` per group of ``group_size`` channels (mamba_ssm's RMSNormGated,
    norm_before_gate=False), or ``rmsnorm(x) * silu(z)`` with ``norm_before_gate`` (fla's FusedRMSNormGated)."""

    def __init__(self, dim: int, eps: float = 1e-6, group_size: int | None = None, norm_before_gate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.group_size = group_size or dim
        self.norm_before_gate = norm_before_gate

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(x, z, self.weight, self.eps, self.group_size, self.norm_before_gate)


def rope_frequencies(config, dim: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``[dim/2]`` and attention scaling for RoPE over ``dim`` dims (default head_dim),
    computed by transformers' own RoPE initialisers (default, linear, dynamic, yarn, llama3, longrope...)."""
    if dim is not None and dim != config.head_dim:
        config = copy.copy(config)
        config.head_dim = dim
    rope_type = config.rope_parameters.get("rope_type", "default")
    if rope_type == "default":
        base = config.rope_parameters["rope_theta"]
        d = config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64, device="cpu").float() / d))
        return inv_freq, 1.0
    # Explicitly on the CPU: models are often built under a meta-device context (from_pretrained), and some
    # initialisers create tensors without a device argument before moving them, so pin the default device too.
    with torch.device("cpu"):
        return ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))


def dynamic_ntk_exponents(config, dim: int | None = None) -> torch.Tensor | None:
    """For ``rope_type: "dynamic"`` (dynamic NTK scaling), the exponents ``e`` ``[dim/2]`` with which each inverse
    frequency scales: ``inv_freq(L) = inv_freq * r ** -e``, ``r = factor * L / max_position_embeddings -
    (factor - 1)`` for the longest position L of a call (at least ``max_position_embeddings``, where r = 1). This is
    transformers' ``_compute_dynamic_ntk_parameters`` (base' = base * r ** (dim / (dim - 2))) written as a product,
    so it needs no data-dependent branch. None for every other RoPE type."""
    if config.rope_parameters.get("rope_type") != "dynamic":
        return None
    dim = dim or config.head_dim
    return torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / (dim - 2)  # not meta (from_pretrained)


class RopeFrequencies:
    """Inverse frequencies kept in float32 whatever dtype the model is cast to (a registered buffer would be
    rounded to bf16 by ``model.to(torch.bfloat16)``, shifting every rotary angle), copied once per device.

    With dynamic NTK scaling (``ntk``: ``(factor, max_position_embeddings, exponents)``, see
    :func:`dynamic_ntk_exponents`) each call scales the frequencies by its own longest position, as transformers'
    dynamic RoPE does on a fresh model; unlike transformers' it keeps no state between calls (transformers keeps
    the longest length seen until a call is shorter than ``max_position_embeddings``)."""

    def __init__(self, inv_freq: torch.Tensor, scaling: float,
                 ntk: tuple[float, int, torch.Tensor] | None = None) -> None:
        self.inv_freq = inv_freq.float().cpu()
        self.scaling = scaling
        self.ntk = ntk
        self._per_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}

    @classmethod
    def of(cls, config, dim: int | None = None, pairs: list[int] | None = None) -> RopeFrequencies:
        """The frequencies of ``config.rope_parameters`` over ``dim`` dims (default head_dim), or only the rotary
        pairs ``pairs`` of the head_dim grid."""
        inv_freq, scaling = rope_frequencies(config, dim)
        exponents = dynamic_ntk_exponents(config, dim)
        if pairs is not None:
            index = torch.tensor(pairs, device="cpu")
            inv_freq = inv_freq[index]
            exponents = exponents[index] if exponents is not None else None
        ntk = None
        if exponents is not None:
            ntk = (float(config.rope_parameters["factor"]), int(config.max_position_embeddings), exponents)
        return cls(inv_freq, scaling, ntk)

    def on(self, device: torch.device) -> torch.Tensor:
        return self._on(device)[0]

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        if device not in self._per_device:
            exponents = self.ntk[2].to(device) if self.ntk is not None else None
            self._per_device[device] = (self.inv_freq.to(device), exponents)
        return self._per_device[device]

    def cos_sin(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq, exponents = self._on(position_ids.device)
        if exponents is not None:
            factor, max_positions, _ = self.ntk
            length = (position_ids.max() + 1).clamp(min=max_positions).float()
            inv_freq = inv_freq * (factor * length / max_positions - (factor - 1)).pow(-exponents)
        return rope_cos_sin(inv_freq, self.scaling, position_ids, dtype)


def rope_cos_sin(
    inv_freq: torch.Tensor, scaling: float, position_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[B, T, 2*len(inv_freq)]`` in the rotate-half layout (frequencies repeated twice)."""
    freqs = position_ids[..., None].float() * inv_freq.to(position_ids.device, torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x ``[B, H, T, D]``; cos/sin ``[B, T, D]``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


@dataclass
class AttentionMask:
    """What attention-style mixers need to mask one forward call.

    ``padding`` is the caller's 2-D mask ``[B, past + T]`` (1 = real token) or None. Attention and MLA build
    the lower-right causal mask against however many keys they hold; SDPA's own ``is_causal`` aligns top-left,
    which is wrong whenever queries are fewer than keys (a cached multi-token step).

    ``valid_keys`` ``[S]`` bool is set instead in a static decode step (:meth:`HyLoCache.static_step`): one query
    per sequence against ``S`` key slots of a preallocated cache, of which only those marked hold tokens.
    """

    padding: torch.Tensor | None
    valid_keys: torch.Tensor | None = None

    def for_linear(self, seq_len: int) -> torch.Tensor | None:
        """``[B, T]`` bool of the current tokens, or None when nothing is padded."""
        if self.padding is None:
            return None
        return self.padding[:, -seq_len:].bool()

    def for_sdpa(self, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor | CausalBias | None:
        """The SDPA mask for ``q_len`` new queries against ``kv_len`` keys (the last ``q_len`` are the queries'):

        * None — no padding, and plain causal is right (q_len == kv_len) or nothing is masked (q_len == 1);
        * a lower-right :class:`CausalBias` — no padding, a cached multi-token step or a prefill segment; the
          flash / memory-efficient kernels apply it without materialising a ``[q_len, kv_len]`` mask, so a
          segment of a million-token prompt costs memory in the segment, not the prompt (on CUDA; off CUDA
          :func:`sdpa` takes the key-blocked path for these steps instead);
        * a bool mask ``[B, 1, q_len, kv_len]`` — padded batches (:func:`~hylo_model.ops.attention.causal_mask`);
        """
        if self.valid_keys is not None:
            raise ValueError("a static step's key slots go to attend_slots, not SDPA (see sdpa)")
        if self.padding is None:
            if q_len == kv_len or q_len == 1:
                return None
            return causal_lower_right(q_len, kv_len)
        return causal_mask(self.keys(kv_len), kv_len - q_len, kv_len, 0, kv_len, device)[:, None]

    def slots(self, q_len: int, kv_len: int) -> torch.Tensor:
        """A static step's ``valid_keys``, checked against one query per sequence and ``kv_len`` key slots."""
        if q_len != 1 or kv_len != self.valid_keys.shape[-1]:
            raise ValueError(f"a static step has one query against {self.valid_keys.shape[-1]} key slots, "
                             f"got {q_len} queries and {kv_len} keys")
        return self.valid_keys

    def allowed(self, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
        """``[B or 1, 1, q_len, kv_len]`` bool, which keys each query sees (for :func:`eager_attention`)."""
        if self.valid_keys is not None:
            return self.slots(q_len, kv_len)[None, None, None, :]
        return causal_mask(self.keys(kv_len), kv_len - q_len, kv_len, 0, kv_len, device)[:, None]

    def keys(self, kv_len: int) -> torch.Tensor | None:
        """``[B, kv_len]`` padding of the keys (1 = real token), or None when nothing is padded."""
        return None if self.padding is None else self.padding[:, -kv_len:]


def attends_in_blocks(q: torch.Tensor, kv_len: int) -> bool:
    """Whether :func:`sdpa` takes the key-blocked PyTorch path for queries ``q`` ``[B, H, T, D]`` against
    ``kv_len`` keys: off CUDA's fused kernels (or under ``force_backend("torch")``), when the keys exceed one
    block or for a cached multi-token step, whose lower-right mask SDPA would materialise as ``[T, kv_len]``."""
    q_len = q.shape[2]
    if backend.use_fast("attention", q, "torch"):
        return False
    return kv_len > BLOCK_SIZE or 1 < q_len < kv_len


def sdpa(
    q: torch.Tensor, k: torch.Tensor | tuple[torch.Tensor, ...], v: torch.Tensor, mask: AttentionMask, scale: float
) -> torch.Tensor:
    """Causal attention. q ``[B, H, T, Dqk]``; k ``[B, Hk, S, Dqk]`` (or a tuple of parts whose features
    concatenate to it); v ``[B, Hk, S, Dv]`` with Hk | H (head h reads KV head h // (H / Hk)).
    Returns ``[B, H, T, Dv]``.

    On CUDA, PyTorch's SDPA picks flash / cuDNN / memory-efficient kernels. Off CUDA, long keys and cached
    multi-token steps go to :func:`~hylo_model.ops.attention.chunked_attention` (memory independent of S, see
    :func:`attends_in_blocks`) and the rest to SDPA's CPU kernels. For one query per sequence (decoding) with
    grouped heads, the query heads of a group are folded into the query axis, so K/V are read once per group
    and never repeated in memory (what MQA/MLA decoding needs at long context). A static step (``mask.valid_keys``)
    goes to :func:`attend_slots` on every device: its query sits at a slot set on the device, not at the last key
    as the key-blocked path assumes, and one query's scores are only ``[B, H, 1, S]``."""
    bsz, heads, q_len, _ = q.shape
    kv_heads, kv_len = v.shape[1], v.shape[2]
    if mask.valid_keys is None and attends_in_blocks(q, kv_len):
        return chunked_attention(q, k, v, scale, valid=mask.keys(kv_len))
    if isinstance(k, tuple):
        k = torch.cat(k, dim=-1)
    groups = heads // kv_heads
    if mask.valid_keys is not None:
        valid = mask.slots(q_len, kv_len)
        q = q.reshape(bsz, kv_heads, groups, q.shape[-1])
        return attend_slots(q, k, v, valid, scale).reshape(bsz, heads, q_len, v.shape[-1])
    if q.is_cuda:
        q, k, v = _row_aligned(q), _row_aligned(k), _row_aligned(v)
    attn_mask = mask.for_sdpa(q_len, kv_len, q.device)
    explicit = attn_mask is not None and not isinstance(attn_mask, CausalBias)
    fold = groups > 1 and (q_len == 1 and kv_len > 1 or explicit)
    with _short_query_kernels(q):
        if not fold:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and q_len > 1, scale=scale,
                enable_gqa=groups > 1,
            )
        q = q.reshape(bsz, kv_heads, groups * q_len, q.shape[-1])
        if attn_mask is not None:
            attn_mask = attn_mask.repeat(1, 1, groups, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return out.reshape(bsz, heads, q_len, v.shape[-1])


def _row_aligned(x: torch.Tensor) -> torch.Tensor:
    """``x``, copied when its rows are not 16-byte aligned. CUDA's memory-efficient SDPA kernel checks the head
    dim but not the strides, and a view whose rows are misaligned (MLA's values split out of ``kv_b_proj``'s
    output with head dims that are not multiples of 8, as in tiny test models) stopped it with "misaligned
    address" (torch 2.11, H100). Real head dims (64, 128) are aligned and never copied."""
    size = x.element_size()
    if (x.storage_offset() * size) % 16 or any((stride * size) % 16 for stride in x.stride()[:-1]):
        return x.contiguous()
    return x


def attention(
    q: torch.Tensor, k: torch.Tensor | tuple[torch.Tensor, ...], v: torch.Tensor, mask: AttentionMask, scale: float,
    *, eager: bool = False, weights: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """What attention and MLA layers call: :func:`sdpa`, or :func:`eager_attention` when the model runs with
    ``attn_implementation="eager"`` or returns attention weights (appended to ``weights``). Shapes as
    :func:`sdpa`."""
    if not eager and weights is None:
        return sdpa(q, k, v, mask, scale)
    out, probs = eager_attention(q, k, v, mask, scale)
    if weights is not None:
        weights.append(probs)
    return out


def eager_attention(
    q: torch.Tensor, k: torch.Tensor | tuple[torch.Tensor, ...], v: torch.Tensor, mask: AttentionMask, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention: the whole score matrix, softmax in float32 rounded to ``q.dtype``.
    q ``[B, H, T, Dqk]``; k ``[B, Hk, S, Dqk]`` (or a tuple of parts); v ``[B, Hk, S, Dv]``.
    Returns the output ``[B, H, T, Dv]`` and the weights ``[B, H, T, S]``."""
    if isinstance(k, tuple):
        k = torch.cat(k, dim=-1)
    groups = q.shape[1] // v.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask.allowed(q.shape[2], k.shape[2], q.device), float("-inf"))
    probs = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v), probs


def attend_slots(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, scale: float
) -> torch.Tensor:
    """A static decode step's attention: q ``[B, Hk, G, D]`` (the G query heads of each KV head folded together)
    against the key slots k ``[B, Hk, S, D]`` / v ``[B, Hk, S, Dv]``, of which ``valid`` ``[S]`` hold tokens.
    Returns ``[B, Hk, G, Dv]``.

    Two batched GEMMs around a float32 softmax, as flash kernels round: float32 scores (cuBLAS writes them from
    16-bit inputs directly), probabilities rounded to the value dtype for the second GEMM. Not SDPA: with a mask it
    can only take its memory-efficient kernel, which covers one query per head with a single block of threads,
    55 ms for a 1M-slot MLA step on an H100 against ~1 ms here (``benchmarks/decode_attention.py``)."""
    bsz, kv_heads, groups, dim = q.shape
    q3, k3, v3 = q.reshape(-1, groups, dim), k.reshape(-1, k.shape[2], dim), v.reshape(-1, v.shape[2], v.shape[-1])
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        scores = torch.bmm(q3, k3.transpose(1, 2), out_dtype=torch.float32)
    else:
        scores = torch.bmm(q3.float(), k3.float().transpose(1, 2))
    weights = scores.mul_(scale).masked_fill_(~valid, float("-inf")).softmax(-1)
    return torch.bmm(weights.to(v.dtype), v3).view(bsz, kv_heads, groups, v.shape[-1])


# Up to this many queries per call, CUDA SDPA skips the cuDNN backend. cuDNN builds (and caches) an execution graph
# per shape; a decode step has a new key length every token, so each step paid 2-16 ms of host time for a graph
# build (measured on H100, torch 2.11: 104 ms per Qwen3-1.7B decode step, GPU busy 5 ms of it). Flash and
# memory-efficient kernels have no per-shape setup.
SHORT_QUERY = 64
_NO_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _short_query_kernels(q: torch.Tensor):
    if q.is_cuda and q.shape[2] <= SHORT_QUERY:
        return sdpa_kernel(_NO_CUDNN)
    return contextlib.nullcontext()
