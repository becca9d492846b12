"""Time per probe sample at 16K and 64K tokens on a Qwen3-1.7B-shaped model with random weights (GPU).

A random Qwen3-1.7B-shaped teacher (transformers, SDPA) is the baseline; the HyLo student upcycled from it (default
layout: one attention layer in four, Gated DeltaNet elsewhere) is timed through the same scorers, both prefilled in
segments through their caches. Weights are random, so scores are 0: this measures speed and memory, not quality.
No download: the tokenizer is the tiny teacher's locally trained BPE (ids < 3072 of the 151936-token vocabulary).

    python benchmarks/probe_speed.py                       # 16k,64k; niah_single_1; 3 samples; both scorers
    python benchmarks/probe_speed.py --lengths 16k --samples 5 --layout A,G,G,G --segment 8192

Prints one markdown row per (model, scorer, length) for benchmarks/RESULTS.md (date, card, command included).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QWEN3_1_7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
                  tie_word_embeddings=True)


def build(layout: str, dtype: torch.dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    import hylo_model

    torch.manual_seed(0)
    with torch.device("cuda"):
        teacher = Qwen3ForCausalLM(Qwen3Config(**QWEN3_1_7B, attn_implementation="sdpa")).to(dtype).eval()
    codes = (layout.split(",") * QWEN3_1_7B["num_hidden_layers"])[:QWEN3_1_7B["num_hidden_layers"]]
    student = hylo_model.upcycle(teacher, ",".join(codes), device="cuda", dtype=dtype).eval()
    return teacher, student


def time_model(name, model, tokenizer, samples, scorer, segment) -> list[str]:
    from hylo_search.probes import score_samples

    rows = []
    for length in sorted({s.max_length for s in samples}):
        group = [s for s in samples if s.max_length == length]
        score_samples(model, tokenizer, group[:1], scorer, segment_size=segment)  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        records = score_samples(model, tokenizer, group, scorer, segment_size=segment)
        torch.cuda.synchronize()
        per = (time.perf_counter() - start) / len(group)
        tokens = sum(r["tokens"] for r in records) / len(records)
        peak = torch.cuda.max_memory_allocated() / 2**30
        rows.append(f"| {name} | {scorer} | {length // 1024}K | {tokens:.0f} | {per:.2f} s | {tokens / per:,.0f} "
                    f"| {peak:.1f} GiB |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16k,64k")
    parser.add_argument("--tasks", default="niah_single_1")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--layout", default="A,G,G,G", help="repeated over the 28 layers")
    parser.add_argument("--segment", type=int, default=8192)
    parser.add_argument("--scorers", default="fast,generate")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 1
    from hylo_search.probes import generate_samples, parse_lengths, parse_tasks
    from hylo_search.tiny_teacher import build_tokenizer

    tokenizer = build_tokenizer()
    samples = [s for t in parse_tasks(args.tasks) for n in parse_lengths(args.lengths)
               for s in generate_samples(t, n, args.samples, tokenizer)]
    teacher, student = build(args.layout, torch.bfloat16)
    print(f"{datetime.date.today()} · {torch.cuda.get_device_name()} · torch {torch.__version__} · "
          f"`python benchmarks/probe_speed.py {' '.join(sys.argv[1:])}` · tasks {args.tasks}, "
          f"{args.samples} samples per length, segment {args.segment}, student layout {args.layout}x7")
    print("| model | scorer | length | tokens | time / sample | tok/s | peak memory |")
    print("|---|---|---|---|---|---|---|")
    for scorer in args.scorers.split(","):
        for name, model in (("Qwen3-1.7B shape (baseline)", teacher), (f"HyLo {args.layout}", student)):
            time_model(name, model, tokenizer, samples, scorer, args.segment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
