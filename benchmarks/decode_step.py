"""One decode step of a HyLo model after a prefill: kernels per step, eager step time and replayed-graph step time.

    python benchmarks/decode_step.py --context 8k --label after
    PYTHONPATH=/path/to/older/checkout python benchmarks/decode_step.py --context 8k --label before

Whatever ``hylo_model`` imports is measured, so pointing ``PYTHONPATH`` at an older checkout measures that version
in the same run. Per step: the CUDA kernels (and memsets/copies) a torch profile records, averaged over a few eager
steps and over a few static steps (what a CUDA graph replays); the eager step's median wall time (synchronised each
step); the replayed graph's median step. Random weights, bf16, batch 1 by default, Qwen3-1.7B shape, 4 MLA + 24 GDN.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from long_context import SHAPES, hylo_model_for, parse_tokens, spaced

import hylo_model
import hylo_model.ops.backend


def profile_step(step, steps: int = 3, top: int = 0, sequence: list | None = None,
                 ) -> tuple[float, float, list[tuple[str, int, float]]]:
    """One torch profile of ``steps`` calls of ``step``: device events per step, their summed device time in ms per
    step, and the ``top`` events by time as (name, calls per step, ms per step). Kernels launched by a CUDA graph
    replay are recorded one by one too (CUPTI reports them), so a replay can be compared with the same step run
    eagerly. ``sequence``, when given, receives the first step's device events in launch order as (name, µs)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if sequence is not None:
        ordered = sorted(events, key=lambda e: e.time_range.start)
        sequence.extend((e.name[:100], round(e.device_time, 2)) for e in ordered[: len(events) // steps])
    totals: dict[str, list[float]] = {}
    for e in events:
        entry = totals.setdefault(e.name[:90], [0, 0.0])
        entry[0] += 1
        entry[1] += e.device_time / 1e3
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]
    busy = sum(ms for _, ms in totals.values())
    return (len(events) / steps, busy / steps,
            [(name, round(n / steps), round(ms / steps, 3)) for name, (n, ms) in ranked])


def median_step_ms(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    return 1e3 * times[len(times) // 2]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-1.7b", choices=sorted(SHAPES))
    parser.add_argument("--layout", default=None, help="layout code (default: 4 MLA + 24 GDN)")
    parser.add_argument("--context", default="8k")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--label", default="")
    parser.add_argument("--top-kernels", type=int, default=0,
                        help="also list this many kernels by time, for the static step run eagerly and replayed")
    parser.add_argument("--prefill-backend", default="auto", choices=["auto", "torch"],
                        help="'torch' prefills on the PyTorch path: no Triton autotuning before the timed steps "
                             "(the steps themselves always take the default path)")
    parser.add_argument("--host-profile", type=int, default=0,
                        help="also print this many functions by own host time (cProfile) over 5 eager steps")
    parser.add_argument("--sequence", default=None,
                        help="write the replayed step's kernels in launch order (name, µs) to this JSON file")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    layout = args.layout or spaced(shape["num_hidden_layers"], "L128", 4, "G")
    model = hylo_model_for(shape, layout, "cuda")
    context = parse_tokens(args.context)
    cache = hylo_model.HyLoCache(model.config, max_length=context + 4 * args.steps + 16)
    ids = torch.randint(0, shape["vocab_size"], (args.batch, context), device="cuda")
    with hylo_model.ops.backend.force_backend(args.prefill_backend):
        token = model(ids, cache=cache, use_cache=True, logits_to_keep=1).logits.argmax(-1)

    def eager():
        model(token, cache=cache, use_cache=True, logits_to_keep=1)

    eager()  # warm-up: autotuning, cuBLAS handles
    row = {"label": args.label, "version_file": hylo_model.__file__, "context": context, "batch": args.batch,
           "card": torch.cuda.get_device_name()}
    row["eager_kernels_per_step"], row["eager_kernel_ms_per_step"], _ = profile_step(eager)
    row["eager_ms"] = median_step_ms(eager, args.steps)
    if args.host_profile:
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(5):
            eager()
        torch.cuda.synchronize()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.host_profile)
        print(text.getvalue(), flush=True)
    static = hylo_model.GraphDecoder(model, cache, use_graphs=False)
    static.step(token)
    row["static_kernels_per_step"], row["static_kernel_ms_per_step"], static_top = profile_step(
        lambda: static.step(token), top=args.top_kernels)
    graphs = hylo_model.GraphDecoder(model, cache)
    graphs.step(token)  # captures
    row["graph_ms"] = median_step_ms(lambda: graphs.step(token), args.steps)
    row["eager_tok_s"] = 1e3 / row["eager_ms"]
    row["graph_tok_s"] = 1e3 / row["graph_ms"]
    if args.top_kernels or args.sequence:
        sequence: list = []
        row["replay_kernels_per_step"], row["replay_kernel_ms_per_step"], row["replay_top"] = profile_step(
            lambda: graphs.step(token), top=args.top_kernels, sequence=sequence)
        if args.sequence:
            with open(args.sequence, "w") as handle:
                json.dump(sequence, handle, indent=0)
        row["static_top"] = static_top
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
