"""One hybrid cache for every layer type, and the exact byte count it will hold.

Per layer, what is kept (B = batch, T = tokens seen):

* ``attention``: ``key``/``value`` ``[B, H_kv, T, head_dim]`` in the activation dtype.
* ``mla``: the compressed KV (after ``kv_a_layernorm`` when present) and the RoPE'd decoupled key. With one RoPE
  key (DeepSeek's R = 1) both live in one tensor ``latent_pe`` ``[B, 1, T, kv_lora_rank + qk_rope_head_dim]``,
  which the absorbed form reads directly as its key (and, through its first ``kv_lora_rank`` dims, as its value);
  with R > 1, ``latent`` ``[B, T, kv_lora_rank]`` and ``k_pe`` ``[B, R, T, qk_rope_head_dim]``. The per-head keys
  and values are never stored.
* ``mamba2``: ``conv`` ``[B, conv_dim, K-1]`` (the last K-1 inputs of the short convolution) in the activation
  dtype and ``ssm`` ``[B, H, P, N]`` in float32 — constant in T.
* ``gdn``: ``conv_q``/``conv_k``/``conv_v`` ``[B, C, K-1]`` and ``recurrent`` ``[B, HV, Dk, Dv]`` in float32 —
  constant in T.

:func:`cache_bytes` predicts the bytes from the config alone (used by the search for memory objectives);
:meth:`HyLoCache.nbytes` counts the real tensors, and the tests hold the two equal.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .config import HyLoConfig

_TIME_DIM = {"key": 2, "value": 2, "latent": 1, "k_pe": 2, "latent_pe": 2}


class HyLoCache:
    """Hybrid cache passed as ``cache=`` (or ``past_key_values=``) to :class:`HyLoForCausalLM`.

    Layers create their entries lazily on first use, so one cache serves any batch size, dtype and device.
    ``get_seq_length()`` is the number of tokens the cache has absorbed.

    ``max_length`` preallocates each growing entry once at that many tokens (on its first append) and writes new
    tokens in place: no ``torch.cat`` copy of the whole cache per step and no transient second copy, which is what
    a million-token prefill needs. Without it, entries grow by concatenation.
    """

    is_compileable = False

    def __init__(self, config: HyLoConfig, max_length: int | None = None) -> None:
        self.mixers = list(config.layer_mixers)
        self.max_length = max_length
        self.layers: list[dict[str, torch.Tensor]] = [{} for _ in self.mixers]
        self._buffers: list[dict[str, torch.Tensor]] = [{} for _ in self.mixers]
        self._seen_tokens = 0

    # ---------------------------------------------------------------------------------------- attention/MLA
    def append(self, layer_idx: int, **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        """Append new time steps to a growing entry (``key``/``value``, ``latent_pe`` or ``latent``/``k_pe``);
        returns the layer's entry, every tensor covering all tokens so far."""
        entry = self.layers[layer_idx]
        for name, tensor in tensors.items():
            dim, old = _TIME_DIM[name], entry.get(name)
            if self.max_length is None:
                entry[name] = tensor if old is None else torch.cat([old, tensor], dim=dim)
                continue
            used = 0 if old is None else old.shape[dim]
            length = used + tensor.shape[dim]
            if length > self.max_length:
                raise ValueError(f"HyLoCache(max_length={self.max_length}) is full: layer {layer_idx} needs {length}")
            buffer = self._buffers[layer_idx].get(name)
            if buffer is None:
                shape = list(tensor.shape)
                shape[dim] = self.max_length
                buffer = self._buffers[layer_idx][name] = tensor.new_empty(shape)
            buffer.narrow(dim, used, tensor.shape[dim]).copy_(tensor)
            entry[name] = buffer.narrow(dim, 0, length)
        return entry

    def cached_length(self, layer_idx: int) -> int:
        """Tokens held by an attention or MLA layer (0 before its first call)."""
        entry = self.layers[layer_idx]
        for name in ("key", "latent_pe", "latent"):
            if name in entry:
                return entry[name].shape[_TIME_DIM[name]]
        return 0

    # ----------------------------------------------------------------------------------------- Mamba2/GDN
    def state(self, layer_idx: int) -> dict[str, torch.Tensor]:
        """The fixed-size state of a linear layer (empty dict at the start of a sequence)."""
        return self.layers[layer_idx]

    def set_state(self, layer_idx: int, **tensors: torch.Tensor) -> None:
        self.layers[layer_idx].update(tensors)

    # ------------------------------------------------------------------------------------------- bookkeeping
    def advance(self, num_tokens: int) -> None:
        """Called by the model after every layer has consumed ``num_tokens`` new tokens."""
        self._seen_tokens += num_tokens

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self._seen_tokens

    def __len__(self) -> int:
        return len(self.mixers)

    @property
    def is_linear(self) -> list[bool]:
        """Per layer, whether it keeps a fixed-size state (transformers' generate reads this)."""
        return [mixer in ("mamba2", "gdn") for mixer in self.mixers]

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.mixers)

    def tensors(self) -> Iterable[torch.Tensor]:
        for entry in self.layers:
            yield from entry.values()

    def nbytes(self) -> int:
        """Bytes of the tokens the cache holds right now (what :func:`cache_bytes` predicts)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def allocated_nbytes(self) -> int:
        """Bytes of device memory the cache occupies (the preallocated capacity, when ``max_length`` is set)."""
        total = 0
        for entry, buffers in zip(self.layers, self._buffers):
            for name, tensor in entry.items():
                held = buffers.get(name, tensor)
                total += held.numel() * held.element_size()
        return total

    def layer_nbytes(self, layer_idx: int) -> int:
        return sum(t.numel() * t.element_size() for t in self.layers[layer_idx].values())

    def _map_batch(self, fn) -> None:
        for entry, buffers in zip(self.layers, self._buffers):
            for name, tensor in list(entry.items()):
                if name in buffers:
                    buffers[name] = fn(buffers[name])
                    entry[name] = buffers[name].narrow(_TIME_DIM[name], 0, tensor.shape[_TIME_DIM[name]])
                else:
                    entry[name] = fn(tensor)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search)."""
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def reset(self) -> None:
        self.layers = [{} for _ in self.mixers]
        self._buffers = [{} for _ in self.mixers]
        self._seen_tokens = 0


def layer_cache_bytes(
    config: HyLoConfig, layer_idx: int, seq_len: int, batch_size: int = 1, dtype: torch.dtype = torch.bfloat16
) -> int:
    """Exact bytes :class:`HyLoCache` holds for one layer after ``seq_len`` tokens."""
    act = torch.empty((), dtype=dtype).element_size()
    f32 = 4
    mixer = config.layer_mixers[layer_idx]
    if mixer == "attention":
        return batch_size * seq_len * 2 * config.num_key_value_heads * config.head_dim * act
    if mixer == "mla":
        per_token = config.layer_kv_lora_rank(layer_idx) + config.mla_rope_heads * config.qk_rope_head_dim
        return batch_size * seq_len * per_token * act
    if mixer == "mamba2":
        conv_dim = (
            config.mamba_x_heads * config.mamba_head_dim
            + (config.mamba_b_groups + config.mamba_n_groups) * config.mamba_d_state
        )
        conv = batch_size * conv_dim * (config.mamba_conv_kernel - 1) * act
        ssm = batch_size * config.mamba_num_heads * config.mamba_head_dim * config.mamba_d_state * f32
        return conv + ssm
    if mixer == "gdn":
        qk = config.gdn_num_heads * config.gdn_head_k_dim
        v = config.gdn_num_v_heads * config.gdn_head_v_dim
        conv = batch_size * (2 * qk + v) * (config.gdn_conv_kernel - 1) * act
        state = batch_size * config.gdn_num_v_heads * config.gdn_head_k_dim * config.gdn_head_v_dim * f32
        return conv + state
    raise ValueError(f"unknown mixer {mixer!r}")


def cache_bytes(config: HyLoConfig, seq_len: int, batch_size: int = 1, dtype: torch.dtype = torch.bfloat16) -> int:
    """Exact bytes of the whole cache after ``seq_len`` tokens (activations in ``dtype``, states in float32)."""
    return sum(
        layer_cache_bytes(config, i, seq_len, batch_size, dtype) for i in range(config.num_hidden_layers)
    )
