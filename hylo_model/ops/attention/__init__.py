"""Causal softmax attention on the pure-PyTorch path: key-blocked with an online softmax (``chunk.py``) beside
a whole-matrix float32 reference (``naive.py``). On CUDA, ``layers.common.sdpa`` calls PyTorch's fused SDPA
kernels instead, which never materialise the score matrix either; see README.md for the math."""

from __future__ import annotations

from .chunk import BLOCK_SIZE, causal_mask, chunked_attention
from .naive import naive_attention

__all__ = ["BLOCK_SIZE", "causal_mask", "chunked_attention", "naive_attention"]
