"""One decode step's attention at long context: which kernel reads the cache at memory speed.

    python benchmarks/decode_attention.py --lengths 8k,128k,1m [--batch 8]

At batch 1 a decode step has one query per sequence. MLA's absorbed form folds its 16 query heads onto the one
latent "head" (``[1, 1, 16, r + d_rope]`` against ``[1, 1, S, r + d_rope]``); attention layers fold each group of
query heads onto its KV head. SDPA's fused kernels parallelise over batch × heads × query blocks, so such a step may
run on a handful of thread blocks however long S is. This script times, on the same tensors, in bf16:

* ``sdpa``: what ``hylo_model.layers.common.sdpa`` calls for an eager decode step (flash / memory-efficient, no mask);
* ``sdpa+mask``: the same with the static step's key-slot mask (what a ``GraphDecoder`` graph replays);
* ``attend_slots``: what a static step runs now (``hylo_model.layers.common.attend_slots``): float32 scores by one
  batched GEMM, masked float32 softmax, one GEMM (cuBLAS spreads both over the keys);
* ``split-k``: flash-decoding in PyTorch — keys in ``--splits`` blocks attended in parallel, merged by their
  log-sum-exp;

and reports each one's time and the bandwidth it reaches reading K/V once, against a device copy measured in the same
run (the roofline). ``--device cpu`` runs it small, as a check of the script (it measures nothing).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from long_context import hbm_bandwidth, parse_tokens
from mixer_overhead import bench
from torch.nn.attention import SDPBackend, sdpa_kernel

from hylo_model.layers.common import attend_slots

# (name, query heads folded per KV head, KV heads, qk dim, v dim): MLA r128 + 64 RoPE dims (Qwen3-1.7B-shape
# layouts of benchmarks/long_context.py, value = the latent's first 128 dims); the teachers' GQA: Qwen3-1.7B's
# 16/8 × 128 and Llama-3.2-1B's 32/8 × 64.
CASES = [("MLA latent (absorbed)", 16, 1, 192, 192), ("GQA attention 16/8", 2, 8, 128, 128),
         ("GQA attention 32/8 × 64 (Llama-3.2-1B)", 4, 8, 64, 64)]


def split_k(q, k, v, scale: float, splits: int, valid=None):
    """q ``[B, H, G, D]`` against k/v ``[B, H, S, D]`` (S divisible by ``splits``): exact attention, in blocks."""
    b, h, g, _ = q.shape
    s = k.shape[2]
    kb = k.view(b, h, splits, s // splits, k.shape[-1])
    vb = v.view(b, h, splits, s // splits, v.shape[-1])
    scores = torch.einsum("bhgd,bhnsd->bhngs", q, kb).float() * scale
    if valid is not None:
        scores = scores.masked_fill(~valid.view(1, 1, splits, 1, s // splits), float("-inf"))
    peak = scores.amax(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).min)  # a block with no valid key
    weights = (scores - peak).exp()
    total = weights.sum(-1, keepdim=True)
    out = torch.einsum("bhngs,bhnsd->bhngd", weights.to(v.dtype), vb).float()
    top = peak.amax(2, keepdim=True)
    rescale = (peak - top).exp()
    return ((out * rescale).sum(2) / (total * rescale).sum(2)).to(v.dtype)


def timed(fn, device: str) -> float:
    """Seconds per call: the median of ``triton.testing.do_bench`` on CUDA (as mixer_overhead.py), one call off it."""
    if device == "cuda":
        return bench(fn) / 1e3
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="8k,128k,1m")
    parser.add_argument("--splits", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1, help="sequences per step (the cache read grows with it)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device, dtype, batch = args.device, torch.bfloat16, args.batch
    lengths = [parse_tokens(x) for x in args.lengths.split(",")] if device == "cuda" else [1024, 4096]
    bandwidth = hbm_bandwidth(device)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (script check, not a measurement)"
    print(f"{name}, torch {torch.__version__}; copy bandwidth {bandwidth / 1e9:,.0f} GB/s; split-k {args.splits} blocks; "
          f"batch {batch}", flush=True)
    print("| case | keys | sdpa ms | sdpa+mask ms | attend_slots ms | split-k ms | best GB/s (% of copy) | split-k max rel. err |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    no_cudnn = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    for case, groups, kv_heads, dqk, dv in CASES:
        for keys in lengths:
            torch.manual_seed(0)
            q = torch.randn(batch, kv_heads, groups, dqk, device=device, dtype=dtype)
            k = torch.randn(batch, kv_heads, keys, dqk, device=device, dtype=dtype)
            v = k[..., :dv] if dv == dqk else torch.randn(batch, kv_heads, keys, dv, device=device, dtype=dtype)
            valid = torch.ones(keys, dtype=torch.bool, device=device)
            valid[-keys // 8:] = False  # the static step's unused slots
            mask = valid.view(1, 1, 1, keys)
            scale = dqk**-0.5

            def eager():
                with sdpa_kernel(no_cudnn):
                    return F.scaled_dot_product_attention(q, k, v, scale=scale)

            def masked():
                with sdpa_kernel(no_cudnn):
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

            def slots():
                return attend_slots(q, k, v, valid, scale)

            def split():
                return split_k(q, k, v, scale, args.splits, valid)

            reference = slots().float()
            error = ((split().float() - reference).abs().max() / reference.abs().max()).item()
            ms = [1e3 * timed(fn, device) for fn in (eager, masked, slots, split)]
            read = k.numel() * k.element_size() + (0 if dv == dqk else v.numel() * v.element_size())
            best = read / (min(ms) / 1e3)
            print(f"| {case} | {keys:,} | {ms[0]:.3f} | {ms[1]:.3f} | {ms[2]:.3f} | {ms[3]:.3f} | "
                  f"{best / 1e9:,.0f} ({100 * best / bandwidth:.0f} %) | {error:.1e} |", flush=True)


if __name__ == "__main__":
    main()
