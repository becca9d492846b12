"""Long prompts on the CPU: segmented prefill into a preallocated cache equals one forward over the whole prompt
(all four mixers), and its peak activation memory does not grow with the prompt length; the key-blocked
attention behind it (``hylo_model.ops.attention``) against plain softmax attention.

Peak memory is measured by :class:`LiveBytes`, a dispatch mode that counts the bytes of every storage an
operator creates for as long as a tensor holds it; the cache's own buffers are left out.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hylo_model import HyLoCache
from hylo_model.ops.attention import chunked_attention, naive_attention
from tests.helpers import MIXED_LAYOUT, tiny_model

SEGMENT = 256
LENGTHS = [2048, 8192]
LOGITS_ATOL = 1e-5
ATTENTION_TOL = 1e-6  # float32 blocked vs whole-matrix softmax


class LiveBytes(TorchDispatchMode):
    """Bytes held by the storages that operators create while the mode is on, checked at every operator
    boundary. A storage counts from the operator that returns it until no tensor refers to it any more; views
    and in-place results share an input's storage and add nothing. Buffers a kernel allocates and frees within
    one operator are not seen. ``peak(exclude)`` replays the timeline without the storages of ``exclude``
    (tensors alive at the end, e.g. a cache allocated on its first write)."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int, int]] = {}  # id -> (ref, nbytes, data_ptr)
        self._events: list[tuple[int, int]] = []  # (id, +/- nbytes), one (-1, 0) per operator boundary
        self.largest = 0

    def _collect(self) -> None:
        for key in [key for key, (ref, _, _) in self._live.items() if ref.expired()]:
            self._events.append((key, -self._live.pop(key)[1]))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat_inputs = tree_flatten((args, kwargs))[0]
        inputs = {t.untyped_storage().data_ptr() for t in flat_inputs if isinstance(t, torch.Tensor)}
        self._collect()
        out = func(*args, **(kwargs or {}))
        self._collect()
        held = inputs | {ptr for _, _, ptr in self._live.values()}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() in held or storage.nbytes() == 0:
                continue
            held.add(storage.data_ptr())
            key = len(self._events)
            self._live[key] = (StorageWeakRef(storage), storage.nbytes(), storage.data_ptr())
            self._events.append((key, storage.nbytes()))
            self.largest = max(self.largest, storage.nbytes())
        self._events.append((-1, 0))
        return out

    def peak(self, exclude: list[torch.Tensor] = ()) -> int:
        ptrs = {t.untyped_storage().data_ptr() for t in exclude}
        skip = {key for key, (_, _, ptr) in self._live.items() if ptr in ptrs}
        live = peak = 0
        for key, delta in self._events:
            if key not in skip:
                live += delta
                peak = max(peak, live)
        return peak


def _prompt(length: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(length))


def _prefill(model, ids: torch.Tensor, cache: HyLoCache, attention_mask=None, position_ids=None) -> torch.Tensor:
    """Feed ``ids`` in segments of ``SEGMENT`` tokens; the last position's logits ``[B, 1, V]``."""
    for start in range(0, ids.shape[1], SEGMENT):
        end = min(start + SEGMENT, ids.shape[1])
        logits = model(
            ids[:, start:end], cache=cache, use_cache=True, logits_to_keep=1,
            attention_mask=None if attention_mask is None else attention_mask[:, :end],
            position_ids=None if position_ids is None else position_ids[:, start:end],
        ).logits
    return logits


@pytest.fixture(scope="module", params=[1, 2], ids=["R1", "R2"])
def model(request):
    """All four mixers; MLA with one shared RoPE key (one cached tensor) or two (latent and keys apart)."""
    return tiny_model(MIXED_LAYOUT, mla_rope_heads=request.param)


@torch.no_grad()
@pytest.mark.parametrize("length", LENGTHS + [1999], ids=lambda n: f"T{n}")
def test_segmented_prefill_equals_one_shot(model, length):
    ids = _prompt(length)
    whole = model(ids, use_cache=False, logits_to_keep=1).logits
    cache = HyLoCache(model.config, max_length=length)
    last = _prefill(model, ids, cache)
    assert cache.get_seq_length() == length
    assert whole.abs().max() > 0.1
    assert (last - whole).abs().max().item() < LOGITS_ATOL


@torch.no_grad()
def test_padded_segmented_prefill_equals_one_shot(model):
    """Left-padded batch over several key blocks: segmented == one shot, and the padded row == itself alone."""
    length, pad = 1300, 37
    ids = _prompt(length, batch=2)
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    whole = model(ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1).logits
    last = _prefill(model, ids, HyLoCache(model.config, max_length=length), mask, positions)
    alone = model(ids[1:, pad:], use_cache=False, logits_to_keep=1).logits
    assert (last - whole).abs().max().item() < LOGITS_ATOL
    assert (whole[1] - alone[0]).abs().max().item() < LOGITS_ATOL


def test_live_bytes_counts_what_is_held():
    with LiveBytes() as live:
        a = torch.ones(1000)  # 4000 bytes
        b = (a + 1).view(10, 100)  # 4000 more; the view adds nothing
        del a
        c = torch.zeros(3000)  # 12000, after a's 4000 are freed
    assert live.largest == 12000 and b.shape == (10, 100)
    assert live.peak() == 16000
    assert live.peak(exclude=[c]) == 8000


@torch.no_grad()
def test_peak_activation_memory_does_not_grow_with_prompt_length(model):
    peaks = {}
    for length in LENGTHS:
        ids, cache = _prompt(length), HyLoCache(model.config, max_length=length)
        with LiveBytes() as live:
            _prefill(model, ids, cache)
        peaks[length] = live.peak(exclude=list(cache.tensors()))
    print(f"\npeak activation bytes per prompt length ({SEGMENT}-token segments): {peaks}")
    # Once the prompt exceeds one key block (1024), every segment allocates the same shapes: the key-blocked
    # attention walks more blocks, one tile at a time, and nothing else depends on the prompt length.
    assert peaks[LENGTHS[0]] == peaks[LENGTHS[-1]]
    # Less than one [segment, prompt] float32 mask at 8K tokens (8.4 MB), what SDPA's CPU path allocated.
    assert peaks[LENGTHS[-1]] < SEGMENT * LENGTHS[-1] * 4


# (batch, heads, kv heads, queries T, keys S, Dk, Dv, block): lower-right causal whenever T < S.
ATTENTION_CASES = [
    (2, 4, 2, 100, 100, 16, 16, 32),  # ordinary causal, odd length, several query and key blocks
    (1, 4, 2, 64, 64, 16, 16, 64),  # exactly one block
    (1, 4, 1, 37, 1000, 24, 16, 64),  # cached segment, MQA, Dv != Dk
    (2, 4, 4, 1, 1000, 16, 16, 128),  # decoding
    (1, 6, 2, 257, 1031, 16, 8, 128),  # odd sizes, query blocks across key-block boundaries
]


def _case_id(case) -> str:
    b, h, hk, t, s, dk, dv, block = case
    return f"B{b}-H{h}-Hk{hk}-T{t}-S{s}-D{dk}x{dv}-blk{block}"


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=ATTENTION_TOL, atol=ATTENTION_TOL)


def _qkv(b, h, hk, t, s, dk, dv, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, t, dk, generator=gen), torch.randn(b, hk, s, dk, generator=gen),
            torch.randn(b, hk, s, dv, generator=gen))


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=_case_id)
def test_chunked_attention_equals_softmax_attention(case):
    b, h, hk, t, s, dk, dv, block = case
    q, k, v = _qkv(b, h, hk, t, s, dk, dv)
    scale = dk**-0.5
    out = chunked_attention(q, k, v, scale, block_size=block)
    # Independent lower-right reference: ordinary causal attention of S queries, keeping the last T.
    q_all = torch.cat([torch.randn(b, h, s - t, dk), q], dim=2)
    expected = F.scaled_dot_product_attention(q_all, k, v, is_causal=True, scale=scale, enable_gqa=h != hk)
    _assert_close(out, expected[:, :, -t:])
    _assert_close(naive_attention(q, k, v, scale), out)
    # Key given as feature parts (MLA's latent and RoPE key): the same numbers.
    parts = (k[..., : dk // 3], k[..., dk // 3 :])
    assert torch.equal(chunked_attention(q, parts, v, scale, block_size=block), out)


@pytest.mark.parametrize("queries", [50, 300], ids=["T50-real-queries", "T300-padded-queries"])
def test_chunked_attention_with_padding(queries):
    """Row 1 left-padded by 20: its real queries see exactly what they would without the padding; padded
    queries stay finite."""
    b, h, hk, s, d, pad, block = 2, 4, 2, 300, 16, 20, 64
    q, k, v = _qkv(b, h, hk, queries, s, d, d, seed=1)
    valid = torch.ones(b, s, dtype=torch.long)
    valid[1, :pad] = 0
    out = chunked_attention(q, k, v, d**-0.5, valid=valid, block_size=block)
    assert torch.isfinite(out).all()
    _assert_close(out, naive_attention(q, k, v, d**-0.5, valid=valid))
    real = min(queries, s - pad)
    alone = chunked_attention(q[1:, :, -real:], k[1:, :, pad:], v[1:, :, pad:], d**-0.5, block_size=block)
    _assert_close(out[1:, :, -real:], alone)
    unpadded = chunked_attention(q[:1], k[:1], v[:1], d**-0.5, block_size=block)
    _assert_close(out[:1], unpadded)


def test_chunked_attention_gradients():
    q, k, v = _qkv(1, 4, 2, 70, 200, 16, 16, seed=2)
    grad_out = torch.randn(1, 4, 70, 16, generator=torch.Generator().manual_seed(3))
    grads = []
    for attend in (lambda *x: chunked_attention(*x, 0.25, block_size=32), lambda *x: naive_attention(*x, 0.25)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        grads.append(torch.autograd.grad((attend(*leaves) * grad_out).sum(), leaves))
    for name, ours, ref in zip("qkv", *grads):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5, msg=lambda m: f"d{name}: {m}")


def test_chunked_attention_bf16_accumulates_in_float32():
    q, k, v = _qkv(1, 4, 2, 33, 500, 16, 16, seed=4)
    out = chunked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.25, block_size=64)
    assert out.dtype == torch.bfloat16
    expected = naive_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), 0.25)
    # One bf16 step at the largest output (|out| <= 0.295, step 2^-9); measured 8.9e-4, the final rounding alone.
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=2**-9)
