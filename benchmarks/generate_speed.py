"""``model.generate`` decode speed, HyLo against the teacher, through transformers' standard API, in one run.

    python benchmarks/generate_speed.py --lengths 8k,32k,128k --batches 1 --new-tokens 64 \
        --configs hylo,hylo-eager,teacher,teacher-static

Configurations (random weights, bf16, Qwen3-1.7B shape; HyLo is 4 MLA + 24 GDN):

* ``hylo``: ``generate`` as a user calls it (on CUDA: a static ``HyLoCache`` and replayed CUDA graphs);
* ``hylo-eager``: ``generate(disable_compile=True)``, the eager step;
* ``teacher``: transformers' Qwen3 ``generate`` by default (DynamicCache, SDPA);
* ``teacher-static``: ``generate(cache_implementation="static")``, whose decode step transformers compiles with
  ``torch.compile`` (mode ``reduce-overhead``: CUDA graphs), its fastest documented configuration.

Every (config, length, batch) runs ``generate`` twice with the same sizes and reports the second (the first
autotunes, compiles or captures). A stopping criterion stamps each new token after a device sync (the loop syncs
there anyway to test for the end), so the decode rate is (tokens - 1) / (last stamp - first stamp), prefill
excluded. The roofline column is the step's floor, (weights + cache at that context) / measured copy bandwidth, over
the measured step. One JSON line per row, then a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
from long_context import SHAPES, _weight_bytes, hbm_bandwidth, hylo_model_for, parse_tokens, spaced, teacher_model
from transformers import StoppingCriteria, StoppingCriteriaList


class Stamps(StoppingCriteria):
    """Records the time each token is chosen; never stops generation."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def run(model, config: str, length: int, batch: int, new_tokens: int, prefill_chunk: int | None = None) -> dict:
    ids = torch.randint(1, model.config.vocab_size, (batch, length), device="cuda")
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                  attention_mask=torch.ones_like(ids))
    if prefill_chunk:
        kwargs["prefill_chunk_size"] = prefill_chunk
    if config == "hylo-eager":
        kwargs["disable_compile"] = True
    if config == "teacher-static":
        kwargs["cache_implementation"] = "static"
    row = {}
    for attempt in range(2):
        stamps = Stamps()
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(ids, stopping_criteria=StoppingCriteriaList([stamps]), **kwargs)
        torch.cuda.synchronize()
        row[f"wall_s_{attempt}"] = time.perf_counter() - start
    assert out.shape == (batch, length + new_tokens), out.shape
    step = (stamps.times[-1] - stamps.times[0]) / (len(stamps.times) - 1)
    row.update(prefill_s=stamps.times[0] - start, step_ms=1e3 * step, seq_tok_s=1 / step, total_tok_s=batch / step)
    return row


def cache_bytes(model, name: str, length: int, batch: int) -> int:
    if name.startswith("hylo"):
        return model.cache_bytes(length, batch)
    c = model.config
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * length * batch * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-1.7b", choices=sorted(SHAPES))
    parser.add_argument("--layout", default=None)
    parser.add_argument("--lengths", default="8k,32k,128k")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--configs", default="hylo,hylo-eager,teacher,teacher-static")
    parser.add_argument("--prefill-chunk", type=int, default=0,
                        help="generate(prefill_chunk_size=N): the prompt is prefilled N tokens at a time")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    layout = args.layout or spaced(shape["num_hidden_layers"], "L128", 4, "G")
    bandwidth = hbm_bandwidth("cuda")
    print(f"card {torch.cuda.get_device_name()}; copy bandwidth {bandwidth / 1e9:,.0f} GB/s", flush=True)
    rows = []
    configs = args.configs.split(",")
    for family in ("hylo", "teacher"):
        chosen = [c for c in configs if c.split("-")[0] == family]
        if not chosen:
            continue
        model = hylo_model_for(shape, layout, "cuda") if family == "hylo" else teacher_model(shape, "cuda")
        weights = _weight_bytes(model)
        for config in chosen:
            for length in (parse_tokens(x) for x in args.lengths.split(",")):
                for batch in (int(b) for b in args.batches.split(",")):
                    row = {"config": config, "tokens": length, "batch": batch,
                           "prefill_chunk": args.prefill_chunk or None}
                    try:
                        row.update(run(model, config, length, batch, args.new_tokens, args.prefill_chunk))
                        floor = (weights + cache_bytes(model, config, length + args.new_tokens // 2, batch)) / bandwidth
                        row["roofline_pct"] = 100 * floor * 1e3 / row["step_ms"]
                    except torch.OutOfMemoryError:
                        row["error"] = "OOM"
                    except Exception as error:  # recorded, so the rows after it still run
                        row["error"] = f"{type(error).__name__}: {error}"[:400]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    gc.collect()
                    torch.cuda.empty_cache()
        if family == "hylo":
            model.release_generation_graphs()
        model = None
        gc.collect()
        torch.cuda.empty_cache()
    print("| config | context | batch | decode tok/s per sequence (ms/step) | total tok/s | roofline % | prefill s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | {r['tokens']:,} | {r['batch']} | {r['error'][:60]} | | | |")
            continue
        print(f"| {r['config']} | {r['tokens']:,} | {r['batch']} | {r['seq_tok_s']:.1f} ({r['step_ms']:.2f}) | "
              f"{r['total_tok_s']:.1f} | {r['roofline_pct']:.0f} | {r['prefill_s']:.2f} |")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"bandwidth_bytes_s": bandwidth, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
