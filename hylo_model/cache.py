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

A *static step* (:meth:`HyLoCache.static_step`, what :class:`~hylo_model.graphs.GraphDecoder` captures in a CUDA
graph) decodes one token per sequence touching only fixed addresses and doing no host work: attention and MLA write
the new token at a device-side position tensor and read a fixed number of key slots (masked beyond it), the linear
layers write their states in place, and the model takes RoPE positions from the same tensor and advances it on the
device. The host-side count of tokens and the per-layer views catch up after the step.

:func:`cache_bytes` predicts the bytes from the config alone (used by the search for memory objectives);
:meth:`HyLoCache.nbytes` counts the real tensors, and the tests hold the two equal.
"""

from __future__ import annotations

import contextlib
import types
from typing import Iterable, Iterator

import torch
import torch.utils._pytree as pytree

from .config import HyLoConfig

_TIME_DIM = {"key": 2, "value": 2, "latent": 1, "k_pe": 2, "latent_pe": 2}
_FLOAT32_STATES = ("ssm", "recurrent")


class HyLoCache:
    """Hybrid cache passed as ``cache=`` (or ``past_key_values=``) to :class:`HyLoForCausalLM`.

    Layers create their entries lazily on first use, so one cache serves any batch size, dtype and device.
    ``get_seq_length()`` is the number of tokens the cache has absorbed.

    ``max_length`` preallocates each growing entry once at that many tokens (on its first append) and writes new
    tokens in place: no ``torch.cat`` copy of the whole cache per step and no transient second copy, which is what
    a million-token prefill needs. Without it, entries grow by concatenation.

    ``version`` counts replacements of the tensors a static step reads (:meth:`static_tensors`); writes in place
    leave it alone, so a captured graph is still valid while it is unchanged.

    A registered pytree node (leaves: the tensors each layer holds), so ``torch.export`` can return one.
    """

    is_compileable = False

    def __init__(self, config: HyLoConfig, max_length: int | None = None) -> None:
        self.mixers = list(config.layer_mixers)
        self.max_length = max_length
        self.layers: list[dict[str, torch.Tensor]] = [{} for _ in self.mixers]
        self._buffers: list[dict[str, torch.Tensor]] = [{} for _ in self.mixers]
        self._seen_tokens = 0
        self.version = 0
        self._static_keys: int | None = None
        self._position: torch.Tensor | None = None
        self._position_at: int | None = None  # what the host knows the position tensor holds (None: unknown)
        self._zeroed: list[set[str]] = [set() for _ in self.mixers]  # buffers whose unwritten slots are zero

    # ---------------------------------------------------------------------------------------- attention/MLA
    def append(self, layer_idx: int, **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        """Append new time steps to a growing entry (``key``/``value``, ``latent_pe`` or ``latent``/``k_pe``);
        returns the layer's entry, every tensor covering all tokens so far (in a static step: the first
        ``static_keys`` slots of each buffer, of which :meth:`static_step` says which hold tokens)."""
        if self._static_keys is not None:
            return self._append_static(layer_idx, tensors)
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
                self._zeroed[layer_idx].discard(name)
                self.version += 1
            buffer.narrow(dim, used, tensor.shape[dim]).copy_(tensor)
            entry[name] = buffer.narrow(dim, 0, length)
        return entry

    def _append_static(self, layer_idx: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = {}
        for name, tensor in tensors.items():
            dim, buffer = _TIME_DIM[name], self._buffers[layer_idx][name]
            if tensor.shape[dim] != 1 or tensor.shape[0] != buffer.shape[0] or tensor.dtype != buffer.dtype:
                raise ValueError(
                    f"a static step appends one token per sequence in the cache's batch and dtype: layer {layer_idx} "
                    f"{name} holds batch {buffer.shape[0]} in {buffer.dtype}, the step brings {tensor.shape[dim]} "
                    f"token(s) of batch {tensor.shape[0]} in {tensor.dtype}")
            # index_copy_ takes the slot from a device tensor: no host sync, and a replayed graph writes where the
            # position has got to, not where it was at capture.
            buffer.index_copy_(dim, self._position, tensor)
            views[name] = buffer.narrow(dim, 0, self._static_keys)
        return views

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
        """Store a linear layer's new state; in a static step, copied into the tensors already held (a captured
        graph reads and writes the same addresses at every replay)."""
        if self._static_keys is None:
            self.layers[layer_idx].update(tensors)
            self.version += 1
            return
        entry = self.layers[layer_idx]
        for name, tensor in tensors.items():
            if entry[name] is tensor:  # updated in place by the step's kernel
                continue
            if entry[name].shape != tensor.shape:
                raise ValueError(f"a static step keeps the state's shape: layer {layer_idx} {name} holds "
                                 f"{tuple(entry[name].shape)}, the step brings {tuple(tensor.shape)}")
            entry[name].copy_(tensor)

    # ------------------------------------------------------------------------------------------- bookkeeping
    def advance(self, num_tokens: int) -> None:
        """Called by the model after every layer has consumed ``num_tokens`` new tokens. In a static step only
        the device-side position moves (inside the captured work); :meth:`static_step` counts the token after."""
        if self._static_keys is not None:
            self._position.add_(num_tokens)
            return
        self._seen_tokens += num_tokens

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self._seen_tokens

    def __len__(self) -> int:
        return len(self.mixers)

    @property
    def batch_size(self) -> int | None:
        """Rows the cache holds (None before the first forward)."""
        return next((t.shape[0] for entry in self.layers for t in entry.values()), None)

    @property
    def dtype(self) -> torch.dtype | None:
        """The activation dtype the cache holds (keys, latents, convolution inputs; None before the first forward)."""
        return next((t.dtype for entry in self.layers for name, t in entry.items() if name not in _FLOAT32_STATES),
                    None)

    # ------------------------------------------------------------------------------------------- static step
    @property
    def static_keys(self) -> int | None:
        """Key slots attention and MLA read in the static step under way (None outside one)."""
        return self._static_keys

    @property
    def position(self) -> torch.Tensor | None:
        """``[1]`` int64 on the cache's device: tokens held before the static step under way (None before the
        first :meth:`prepare_static`). Created once and never replaced, so captured graphs can read it."""
        return self._position

    def prepare_static(self) -> torch.Tensor:
        """Make the cache ready for static steps; returns :attr:`position`, set to the tokens held.

        Needs ``max_length`` and a prefill through every layer. Zeroes the never-written slots of the buffers once
        (``new_empty`` memory may hold NaN, and a masked score does not stop ``0 * NaN`` in the value sum) and
        writes the position when the host does not know it to be right. Both are host-issued work, so under a
        CUDA graph capture nothing may be left to do (it would be replayed at every step)."""
        if self.max_length is None:
            raise ValueError("static decode steps need a preallocated cache: HyLoCache(config, max_length=...)")
        held = self._seen_tokens
        empty = [i for i, entry in enumerate(self.layers) if not entry]
        if held == 0 or empty:
            raise ValueError(f"static decode steps follow a prefill through every layer; the cache holds {held} "
                             f"tokens and layers {empty} hold nothing")
        device = next(iter(self.layers[0].values())).device
        unzeroed = [(i, name) for i, buffers in enumerate(self._buffers) for name in buffers
                    if name not in self._zeroed[i]]
        stale = self._position is None or self._position.device != device or self._position_at != held
        if not (unzeroed or stale):
            return self._position
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("HyLoCache.prepare_static() must run before a CUDA graph capture, not inside it")
        for i, name in unzeroed:
            dim = _TIME_DIM[name]
            self._buffers[i][name].narrow(dim, held, self.max_length - held).zero_()
            self._zeroed[i].add(name)
        if self._position is None or self._position.device != device:
            self._position = torch.zeros(1, dtype=torch.long, device=device)
            self.version += 1
        self._position.fill_(held)
        self._position_at = held
        return self._position

    @contextlib.contextmanager
    def static_step(self, keys: int, commit: bool = True) -> Iterator[torch.Tensor]:
        """Run the model on one token per sequence as a static step reading ``keys`` key slots (``tokens held <
        keys <= max_length``); yields :attr:`position`. The model, seeing :attr:`static_keys` set, takes its
        RoPE positions from the position and masks the key slots past it.

        On exit, ``commit`` counts the token on the host (tokens held, the layers' views); without it (warm-up
        runs or a CUDA graph capture, whose work does not count) the position is marked unknown, to be rewritten
        before the next step."""
        position = self.prepare_static()
        held = self._seen_tokens
        if held + 1 > self.max_length:
            raise ValueError(f"HyLoCache(max_length={self.max_length}) is full: it holds {held} tokens, a step "
                             f"needs room for {held + 1}")
        if not held < keys <= self.max_length:
            raise ValueError(f"a static step at {held} tokens reads {held + 1}..{self.max_length} key slots, "
                             f"got keys={keys}")
        self._static_keys = keys
        try:
            yield position
        except BaseException:
            self._position_at = None
            raise
        finally:
            self._static_keys = None
        if not commit:
            self._position_at = None
            return
        self._seen_tokens += 1
        self._position_at = self._seen_tokens
        for entry, buffers in zip(self.layers, self._buffers):
            for name, buffer in buffers.items():
                entry[name] = buffer.narrow(_TIME_DIM[name], 0, self._seen_tokens)

    def static_tensors(self) -> dict[tuple[int, str], torch.Tensor]:
        """What a static step reads and writes, by ``(layer, name)``: every preallocated buffer, every linear
        state, and ``(-1, "position")``."""
        tensors = {} if self._position is None else {(-1, "position"): self._position}
        for i, (entry, buffers, linear) in enumerate(zip(self.layers, self._buffers, self.is_linear)):
            tensors.update({(i, name): buffer for name, buffer in buffers.items()})
            if linear:
                tensors.update({(i, name): state for name, state in entry.items()})
        return tensors

    def adopt_static(self, tensors: dict[tuple[int, str], torch.Tensor]) -> bool:
        """Hold ``tensors`` (an earlier :meth:`static_tensors`) again, so a graph captured with them stays valid:
        a linear state an eager forward replaced is copied into its old tensor, which the cache takes back.
        False, changing nothing, when that cannot work: a buffer or the position was replaced (``reset``,
        ``reorder_cache``) or a state changed shape."""
        current = self.static_tensors()
        if current.keys() != tensors.keys():
            return False
        moved = [key for key, tensor in tensors.items() if current[key] is not tensor]
        for key in moved:
            old, new = tensors[key], current[key]
            if key[1] in _TIME_DIM or key[0] < 0 or (old.shape, old.dtype, old.device) != (
                    new.shape, new.dtype, new.device):
                return False
        for layer, name in moved:
            tensors[layer, name].copy_(current[layer, name])
            self.layers[layer][name] = tensors[layer, name]
        self.version += bool(moved)
        return True

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
        self.version += 1
        self._zeroed = [set() for _ in self.mixers]
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

    def rewind(self) -> None:
        """Forget every token but keep the preallocated buffers and the position tensor, so CUDA graphs captured on
        this cache stay valid for a new sequence of the same batch size: the next prefill writes from slot 0, the
        linear states start again from zero, and :meth:`prepare_static` zeroes the unwritten slots again."""
        self.layers = [{} for _ in self.mixers]
        self._seen_tokens = 0
        self._zeroed = [set() for _ in self.mixers]
        self._position_at = None

    def reset(self) -> None:
        self.layers = [{} for _ in self.mixers]
        self._buffers = [{} for _ in self.mixers]
        self._seen_tokens = 0
        self.version += 1
        self._zeroed = [set() for _ in self.mixers]
        self._position_at = None  # the position tensor itself is kept: graphs may have captured it


def _flatten(cache: HyLoCache) -> tuple[list, tuple]:
    return [cache.layers], (tuple(cache.mixers), cache.get_seq_length())


def _flatten_with_keys(cache: HyLoCache) -> tuple[list, tuple]:
    return [(pytree.GetAttrKey("layers"), cache.layers)], (tuple(cache.mixers), cache.get_seq_length())


def _unflatten(children: list, context: tuple) -> HyLoCache:
    mixers, seen_tokens = context
    cache = HyLoCache(types.SimpleNamespace(layer_mixers=list(mixers)))
    cache.layers = [dict(entry) for entry in children[0]]
    cache._seen_tokens = seen_tokens
    return cache


# A pytree node, so that torch.export can return a cache (and torch.compile / torch.func see its tensors): the
# leaves are the tensors each layer holds. Preallocated buffers and static-step state are not carried over: a cache
# rebuilt from its leaves holds the same tokens and grows by concatenation.
pytree.register_pytree_node(HyLoCache, _flatten, _unflatten, serialized_type_name="hylo_model.cache.HyLoCache",
                            flatten_with_keys_fn=_flatten_with_keys)


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
