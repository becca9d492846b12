"""Long-context prefill / decode / cache memory: the teacher (transformers' own implementation) against HyLo layouts.

One command, one card, one run — the teacher baseline is measured in the same process as the hybrids:

    python benchmarks/long_context.py --shape qwen3-1.7b --lengths 8k,32k,128k,512k,1m,2m --decode-at 8k,128k,1m

Per (model, length): one-shot prefill for the teacher (SDPA, logits_to_keep=1), segmented prefill through the
hybrid cache for HyLo (``--segment`` tokens per forward), wall time and peak GPU memory, OOM recorded as OOM;
decode tokens/s after prefill at the ``--decode-at`` lengths; cache bytes measured (the cache's tensors) vs
predicted (``model.cache_bytes``). Random weights, bf16. Prints a markdown table (paste into RESULTS.md) and
writes JSON to ``--out``. With ``--graphs``, HyLo rows also decode through ``GraphDecoder`` (CUDA graphs) after the
eager decode, in the same run: ``decode_graph_tok_s`` beside ``decode_tok_s``, and the capture (warm-up included)
timed apart as ``graph_capture_s``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import hylo_model
from hylo_model import HyLoConfig, HyLoForCausalLM, Layout

SHAPES = {
    # Qwen3-1.7B and Llama-3.2-1B dimensions (random weights; nothing is downloaded).
    "qwen3-1.7b": dict(family="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       rope_theta=1_000_000.0, tie_word_embeddings=True),
    "llama3.2-1b": dict(family="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                        rope_theta=500_000.0, tie_word_embeddings=True),
    "tiny": dict(family="qwen3", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                 tie_word_embeddings=True),
}


def spaced(num_layers: int, minor: str, count: int, major: str) -> str:
    """``count`` layers of ``minor`` evenly spaced (ending at the last layer), ``major`` elsewhere."""
    stride = num_layers / count
    picks = {round(num_layers - 1 - i * stride) for i in range(count)}
    return ",".join(minor if i in picks else major for i in range(num_layers))


def parse_tokens(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def teacher_model(shape: dict, device: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    values = {k: v for k, v in shape.items() if k not in ("family", "rope_theta")}
    values["rope_parameters"] = {"rope_type": "default", "rope_theta": shape["rope_theta"]}
    values["max_position_embeddings"] = 4 * 1024 * 1024
    config_class, model_class = (Qwen3Config, Qwen3ForCausalLM) if shape["family"] == "qwen3" else (
        LlamaConfig, LlamaForCausalLM)
    config = config_class(**values)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        return model_class(config).to(torch.bfloat16).eval()


def hylo_model_for(shape: dict, layout: str, device: str) -> HyLoForCausalLM:
    values = {k: v for k, v in shape.items() if k not in ("family", "rope_theta")}
    heads, kv, hd = values["num_attention_heads"], values["num_key_value_heads"], values["head_dim"]
    config = HyLoConfig(
        **values, rope_parameters={"rope_type": "default", "rope_theta": shape["rope_theta"]},
        max_position_embeddings=4 * 1024 * 1024, qk_norm=shape["family"] == "qwen3", hylo_layout=layout,
        qk_rope_head_dim=hd // 2, kv_lora_rank=min(128, 2 * hd), mamba_num_heads=heads, mamba_head_dim=hd, mamba_d_state=hd,
        mamba_n_groups=heads, mamba_xb_heads=kv, gdn_num_heads=heads, gdn_head_k_dim=hd, gdn_head_v_dim=hd,
    )
    with torch.device(device):
        return HyLoForCausalLM(config).to(torch.bfloat16).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


@torch.no_grad()
def run_teacher(model, length: int, device: str, decode_tokens: int, decode: bool) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (1, length), device=device)
    torch.cuda.reset_peak_memory_stats() if device.startswith("cuda") else None
    start = time.perf_counter()
    out = model(ids, use_cache=True, logits_to_keep=1)
    _sync(device)
    row = {"prefill_s": time.perf_counter() - start, "peak_gib": _peak_gib(device)}
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    row["cache_bytes"] = sum(
        t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
    )
    if decode:
        # Decode steps get what hylo_model's sdpa does for short queries: no cuDNN backend, whose per-shape graph
        # build costs milliseconds of host time per step (the key length changes every token). Prefill keeps it.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            row["decode_tok_s"] = _decode(lambda t, c: model(t, past_key_values=c, use_cache=True), cache,
                                          out.logits, decode_tokens, device)
        row["decode_bytes"] = _weight_bytes(model) + row["cache_bytes"]
    return row


@torch.no_grad()
def run_hylo(model, length: int, device: str, segment: int, decode_tokens: int, decode: bool,
             graphs: bool = False) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (1, length), device=device)
    cache = hylo_model.HyLoCache(model.config, max_length=length + (2 if graphs else 1) * decode_tokens + 1)
    torch.cuda.reset_peak_memory_stats() if device.startswith("cuda") else None
    start = time.perf_counter()
    for begin in range(0, length, segment):
        out = model(ids[:, begin : begin + segment], cache=cache, use_cache=True, logits_to_keep=1)
    _sync(device)
    row = {"prefill_s": time.perf_counter() - start, "peak_gib": _peak_gib(device),
           "cache_bytes": cache.nbytes(), "cache_bytes_predicted": model.cache_bytes(length)}
    if decode:
        row["decode_tok_s"] = _decode(lambda t, c: model(t, cache=c, use_cache=True), cache, out.logits,
                                      decode_tokens, device)
        row["decode_bytes"] = _weight_bytes(model) + row["cache_bytes"]
    if decode and graphs:
        # Continues the same cache after the eager decode (its bucket serves every step of this run).
        try:
            decoder = hylo_model.GraphDecoder(model, cache)
            start = time.perf_counter()
            decoder.capture()
            _sync(device)
            row["graph_capture_s"] = time.perf_counter() - start
            row["decode_graph_tok_s"] = _decode(lambda t, c: SimpleNamespace(logits=decoder.step(t)), cache,
                                                out.logits, decode_tokens, device)
        except RuntimeError as error:  # recorded, so the eager rows of the run survive a failed capture
            row["graph_error"] = f"{type(error).__name__}: {error}"[:300]
    return row


def _weight_bytes(model) -> int:
    """Bytes a decode step must read at least once: every parameter (the tied embedding counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def hbm_bandwidth(device: str) -> float:
    """Measured device-memory bandwidth in bytes/s: a 2 GiB device-to-device copy (read + write), best of 12."""
    if not device.startswith("cuda"):
        return float("nan")
    src = torch.empty(2**30, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 2**31 / best


def warm_up(fn) -> None:
    """One short untimed run per model: Triton autotuning and cuBLAS heuristics happen here, not in a row."""
    fn()
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def _decode(step, cache, logits, tokens: int, device: str) -> float:
    token = logits[:, -1:].argmax(-1)
    times = []
    for _ in range(tokens):
        start = time.perf_counter()
        token = step(token, cache).logits[:, -1:].argmax(-1)
        _sync(device)
        times.append(time.perf_counter() - start)
    times = sorted(times[2:] or times)
    return 1.0 / times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-1.7b", choices=sorted(SHAPES))
    parser.add_argument("--layouts", default=None,
                        help="';'-separated layout codes (default: 4 MLA + 24 GDN; 8 MLA + 20 GDN; 4 attention + 24 Mamba2)")
    parser.add_argument("--lengths", default="8k,32k,128k")
    parser.add_argument("--hylo-lengths", default=None, help="lengths for the first layout only (default --lengths)")
    parser.add_argument("--decode-at", default="8k,128k")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--segment", default="32k")
    parser.add_argument("--graphs", action="store_true",
                        help="also decode HyLo rows with GraphDecoder (CUDA graphs), beside the eager decode")
    parser.add_argument("--no-teacher", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    shape = SHAPES[args.shape]
    layers = shape["num_hidden_layers"]
    mla = "L128" if shape["hidden_size"] >= 1024 else "L16"
    layouts = args.layouts.split(";") if args.layouts else [
        spaced(layers, mla, 4, "G"), spaced(layers, mla, 8, "G"), spaced(layers, "A", 4, "M")]
    lengths = [parse_tokens(x) for x in args.lengths.split(",")]
    first_lengths = [parse_tokens(x) for x in args.hylo_lengths.split(",")] if args.hylo_lengths else lengths
    decode_at = {parse_tokens(x) for x in args.decode_at.split(",") if x}
    segment = parse_tokens(args.segment)
    device = args.device
    bandwidth = hbm_bandwidth(device)
    print(f"measured copy bandwidth {bandwidth / 1e9:,.0f} GB/s", flush=True)
    results = []

    def record(name: str, length: int, fn) -> None:
        try:
            row = fn()
        except torch.OutOfMemoryError:
            row = {"oom": True}
        gc.collect()
        torch.cuda.empty_cache() if device.startswith("cuda") else None
        row.update(model=name, tokens=length)
        results.append(row)
        print(json.dumps(row), flush=True)

    if not args.no_teacher:
        teacher = teacher_model(shape, device)
        warm_up(lambda: run_teacher(teacher, 4096, device, 4, True))
        for length in lengths:
            record(f"teacher ({shape['family']})", length,
                   lambda: run_teacher(teacher, length, device, args.decode_tokens, length in decode_at))
            if results[-1].get("oom"):
                break
        teacher = None
    for index, code in enumerate(layouts):
        model = hylo_model_for(shape, code, device)
        name = _describe(code)
        # Triton autotunes per input shape and per variant (a segment after the first carries state and a
        # cache): warm every row up to its first two segments, so each one-shot length and the carried segment
        # are tuned before any timed row (a 32K row after a 64K-segment warm-up was once tuned inside its row).
        rows = first_lengths if index == 0 else lengths
        shapes = sorted({min(n, 2 * segment) for n in rows})
        warm_up(lambda: [run_hylo(model, n, device, segment, 4, True, args.graphs) for n in shapes])
        for length in rows:
            record(name, length, lambda: run_hylo(model, length, device, segment, args.decode_tokens,
                                                  length in decode_at, args.graphs))
            if results[-1].get("oom"):
                break
        model = None  # free it before the next layout is built

    print(_table(results, device, bandwidth))
    if args.out:
        Path(args.out).write_text(json.dumps({"bandwidth_bytes_s": bandwidth, "rows": results}, indent=1))


def _describe(code: str) -> str:
    counts = Layout.parse(code).counts()
    return " + ".join(f"{n} {m}" for m, n in counts.items() if n)


def _table(rows: list[dict], device: str, bandwidth: float) -> str:
    """Markdown rows; the roofline column is the decode step's floor (weights + cache bytes / measured bandwidth)
    over the measured step time: 100 % would be a step bound only by reading its bytes once."""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    graphs = any("decode_graph_tok_s" in r for r in rows)
    lines = [f"card: {name}; measured copy bandwidth {bandwidth / 1e9:,.0f} GB/s", "",
             "| model | tokens | prefill s | prefill tok/s | peak GiB | cache MiB (measured / predicted) | "
             "decode tok/s | decode ms (roofline ms, %) |" + (" graph decode tok/s (capture s) |" if graphs else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if graphs else "")]
    for r in rows:
        if r.get("oom"):
            lines.append(f"| {r['model']} | {r['tokens']:,} | OOM | | | | | |" + (" |" if graphs else ""))
            continue
        roof = ""
        if "decode_tok_s" in r:
            step, floor = 1e3 / r["decode_tok_s"], 1e3 * r["decode_bytes"] / bandwidth
            roof = f"{step:.1f} ({floor:.1f}, {100 * floor / step:.0f} %)"
        graph = f" {r['decode_graph_tok_s']:.1f} ({r['graph_capture_s']:.2f}) |" if "decode_graph_tok_s" in r else " |"
        predicted = r.get("cache_bytes_predicted")
        cache = f"{r['cache_bytes'] / 2**20:,.1f}" + (f" / {predicted / 2**20:,.1f}" if predicted else "")
        lines.append(f"| {r['model']} | {r['tokens']:,} | {r['prefill_s']:.2f} | {r['tokens'] / r['prefill_s']:,.0f} "
                     f"| {r['peak_gib']:.1f} | {cache} | {r.get('decode_tok_s', float('nan')):.1f} | {roof} |"
                     + (graph if graphs else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
