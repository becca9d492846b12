"""CUDA-graph decoding: one decode step (one new token per sequence) captured once per key bucket, replayed per token.

Batch-1 decoding on CUDA is bound by the host: a Qwen3-1.7B-shape hybrid (4 MLA + 24 GDN) launched ~1,400 kernels
per step from Python, 48 ms of wall time for 5.3 ms of GPU work (H100 profile). A replayed graph launches them all
at once. What replaying needs, and where it comes from:

* fixed addresses: the cache's preallocated buffers (``HyLoCache(max_length=...)``), its linear states (written in
  place in a static step), its device-side position, and this decoder's token input and logits output;
* fixed shapes: attention and MLA read a fixed number of key slots, the *bucket* (the smallest of ``buckets`` above
  the context), masking the slots past the position; one graph per bucket, captured when a step first needs it;
* no host work inside: RoPE positions, the cache write and the position's increment happen on the device
  (:meth:`HyLoCache.static_step`); the host-side count of tokens catches up after each step, so an eager forward
  afterwards sees the right cache.

Off CUDA, or with ``use_graphs=False``, the same static step runs eagerly: that is what the CPU tests compare with
the ordinary decode.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .cache import HyLoCache

# The smallest default bucket: a step reads at most twice the keys it needs once the context passes this.
SMALLEST_BUCKET = 4096


def default_buckets(max_length: int, smallest: int = SMALLEST_BUCKET) -> list[int]:
    """Powers of two from ``smallest`` below ``max_length``, then ``max_length``."""
    buckets, size = [], smallest
    while size < max_length:
        buckets.append(size)
        size *= 2
    return buckets + [max_length]


class GraphDecoder:
    """Decode with ``model`` into ``cache`` one token per sequence per step, replaying CUDA graphs.

    ``cache`` must be a ``HyLoCache(config, max_length=...)`` the prompt was already run through (any eager
    forward: one-shot or segmented prefill). A step at context ``c`` reads the smallest bucket ``>= c + 1`` key slots;
    ``buckets`` defaults to :func:`default_buckets` and always ends at ``max_length``. Graphs are captured lazily per
    bucket after ``warmup`` untimed runs on a side stream (Triton autotuning and cuBLAS setup happen there, not in the
    capture; the runs' writes to the linear states are undone, their write to the next key slot is overwritten by
    the step itself). All graphs share one memory pool, the token input and the cache; a graph stays valid while
    the cache keeps its buffers: eager forwards in between are fine (the states they replace are copied back), a
    ``reset()`` or ``reorder_cache()`` makes the next step capture again.

    Graphs capture the model's weights by address: do not move or replace them after the first step.
    """

    def __init__(self, model: nn.Module, cache: HyLoCache, buckets: Iterable[int] | None = None, *,
                 use_graphs: bool | None = None, warmup: int = 3) -> None:
        if not isinstance(cache, HyLoCache):
            raise TypeError(f"cache must be a HyLoCache, got {type(cache).__name__}")
        if cache.max_length is None:
            raise ValueError("GraphDecoder needs a preallocated cache: HyLoCache(config, max_length=...)")
        buckets = sorted({int(b) for b in (default_buckets(cache.max_length) if buckets is None else buckets)})
        if not buckets or buckets[0] < 1 or buckets[-1] > cache.max_length:
            raise ValueError(f"buckets must lie in 1..max_length={cache.max_length}, got {buckets}")
        self.model, self.cache = model, cache
        self._embeddings = model.get_input_embeddings()  # its dtype is the model's compute dtype
        self.buckets = buckets if buckets[-1] == cache.max_length else buckets + [cache.max_length]
        self.device = next(model.parameters()).device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        if self.use_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {self.device}")
        self.warmup = warmup
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._logits: dict[int, torch.Tensor] = {}  # each graph's output [B, 1, V], rewritten by its replays
        self._tokens: torch.Tensor | None = None  # the graphs' input [B, 1]
        self._bound: dict[tuple[int, str], torch.Tensor] | None = None  # the cache tensors the graphs captured
        self._version = -1
        self._pool = None
        self._stream: torch.cuda.Stream | None = None

    @property
    def captured(self) -> list[int]:
        """Buckets whose graph is captured."""
        return sorted(self._graphs)

    def bucket(self, context: int) -> int:
        """Key slots a step at ``context`` tokens reads: the smallest bucket ``>= context + 1``."""
        for size in self.buckets:
            if size > context:
                return size
        raise ValueError(f"a step at context {context} needs {context + 1} key slots, past "
                         f"HyLoCache(max_length={self.cache.max_length})")

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[B, 1]`` -> logits ``[B, 1, V]`` of the next token; the cache advances by one token."""
        return self._step(tokens).clone()

    @torch.no_grad()
    def greedy(self, first_token: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Feed ``first_token`` ``[B, 1]`` (e.g. the argmax of the prefill's last logits), then each argmax:
        ``num_tokens`` steps, returning the ``[B, num_tokens]`` tokens they chose. No host sync between steps."""
        token, chosen = first_token, []
        for _ in range(num_tokens):
            token = self._step(token).argmax(-1)
            chosen.append(token)
        return torch.cat(chosen, dim=1) if chosen else first_token.new_empty(first_token.shape[0], 0)

    @torch.no_grad()
    def capture(self, keys: int | None = None) -> int:
        """Capture now the graph for ``keys`` slots (default: the bucket of the next step), so a caller can time it
        apart from the steps; returns the bucket. Does nothing but return it when graphs are off."""
        context = self._check(None)
        keys = self.bucket(context) if keys is None else keys
        if keys not in self.buckets or keys <= context:
            raise ValueError(f"keys={keys} is not a bucket above context {context}; buckets: {self.buckets}")
        if self.use_graphs:
            self._bind()
            if keys not in self._graphs:
                self._capture(keys)
        return keys

    # ------------------------------------------------------------------------------------------------ internals
    def _check(self, tokens: torch.Tensor | None) -> int:
        """The context of the next step, once the cache (and ``tokens``) are found fit for it. Checked before any
        layer runs: a step failing halfway would leave some linear states advanced."""
        cache = self.cache
        context = cache.get_seq_length()
        if context == 0:
            raise ValueError("GraphDecoder decodes after a prefill: run the prompt through the model with this "
                             "cache first (the cache holds 0 tokens)")
        if context + 1 > cache.max_length:
            raise ValueError(f"context {context} + 1 token exceeds HyLoCache(max_length={cache.max_length})")
        dtype = self._embeddings.weight.dtype
        if cache.dtype != dtype:
            raise ValueError(f"the cache holds {cache.dtype} activations, the model computes in {dtype}")
        if tokens is None:
            return context
        if tokens.dim() != 2 or tokens.shape[1] != 1 or tokens.is_floating_point():
            raise ValueError(f"tokens must be integer ids [batch, 1], got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[0] != cache.batch_size:
            raise ValueError(f"tokens have batch {tokens.shape[0]}, the cache holds batch {cache.batch_size}")
        if tokens.device != self.device:
            raise ValueError(f"tokens are on {tokens.device}, the model on {self.device}")
        return context

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 1, V]``; with graphs, the bucket's static output, valid until the next replay of any graph
        (they share one memory pool, so one graph's temporaries may lie where another's output is)."""
        keys = self.bucket(self._check(tokens))
        if not self.use_graphs:
            with self.cache.static_step(keys):
                return self._forward(tokens)
        self._bind()
        if keys not in self._graphs:
            self._capture(keys)
        self._tokens.copy_(tokens)
        with self.cache.static_step(keys):
            self._graphs[keys].replay()
        return self._logits[keys]

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, cache=self.cache, use_cache=True, logits_to_keep=1).logits

    def _bind(self) -> None:
        """Make sure the cache holds the tensors the graphs were captured with; else drop the graphs and bind to
        the cache as it is."""
        cache = self.cache
        if self._bound is not None and (cache.version == self._version or cache.adopt_static(self._bound)):
            self._version = cache.version
            return
        cache.prepare_static()  # creates the position tensor, which the binding includes
        self._graphs.clear()
        self._logits.clear()
        self._pool = None
        self._bound = cache.static_tensors()
        self._version = cache.version
        self._tokens = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=self.device)

    def _capture(self, keys: int) -> None:
        cache = self.cache
        states = [t for (layer, _), t in self._bound.items() if layer >= 0 and cache.is_linear[layer]]
        saved = [t.clone() for t in states]
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            try:
                for _ in range(self.warmup):
                    with cache.static_step(keys, commit=False):
                        self._forward(self._tokens)
            finally:
                for state, copy in zip(states, saved):
                    state.copy_(copy)
            cache.prepare_static()  # the warm-up moved the position on: set it back outside the capture
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=stream):
            with cache.static_step(keys, commit=False):
                logits = self._forward(self._tokens)
        self._pool = graph.pool() if self._pool is None else self._pool
        self._graphs[keys], self._logits[keys] = graph, logits


__all__ = ["GraphDecoder", "default_buckets", "SMALLEST_BUCKET"]
