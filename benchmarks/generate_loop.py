"""Where one ``model.generate`` decode token's time goes on CUDA: the host before the step's launch, the launch, the
host after it, and the wait for the device at transformers' per-token stop check.

    python benchmarks/generate_loop.py --lengths 8k,32k --new-tokens 64

transformers' decode loop syncs once per token (``StopCheck``: ``bool(unfinished.max() == 0)``), so a token costs the
host work between that sync and the next step's launch plus the device's step; host work after the launch overlaps
the device. This benchmark times those segments by wrapping, for the run only, ``StopCheck.__call__``, HyLo's
``prepare_inputs_for_generation`` and ``CUDAGraph.replay`` (CUDA events around each replay give the graph's device
time inside ``generate``). HyLo 4 MLA + 24 GDN at the Qwen3-1.7B shape, random weights, bf16, batch 1, greedy; the
second of two ``generate`` calls is reported (the first captures). Medians over the decode tokens, in µs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import transformers
from long_context import SHAPES, hylo_model_for, parse_tokens, spaced
from transformers.generation import utils as generation_utils

import hylo_model

STAMPS: dict[str, list[float]] = {}
EVENTS: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []


def _stamp(name: str) -> None:
    STAMPS.setdefault(name, []).append(time.perf_counter())


def _wrap(owner, attribute: str, before: str, after: str, events: bool = False) -> None:
    original = getattr(owner, attribute)

    def wrapped(*args, **kwargs):
        _stamp(before)
        if events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        result = original(*args, **kwargs)
        if events:
            end.record()
            EVENTS.append((start, end))
        _stamp(after)
        return result

    setattr(owner, attribute, wrapped)


def _median_us(values: list[float]) -> float:
    return round(1e6 * statistics.median(values), 1)


@torch.no_grad()
def run(model, length: int, new_tokens: int) -> dict:
    ids = torch.randint(1, model.config.vocab_size, (1, length), device="cuda")
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    for _ in range(2):
        STAMPS.clear()
        EVENTS.clear()
        torch.cuda.synchronize()
        model.generate(ids, **kwargs)
        torch.cuda.synchronize()
    stop_in, stop_out = STAMPS["stop_in"], STAMPS["stop_out"]
    replay_in, replay_out = STAMPS["replay_in"], STAMPS["replay_out"]
    prep_in = STAMPS["prep_in"]
    # Token i's step is replay i; it follows stop check i (the prefill's token is stop check 0).
    n = min(len(replay_in), len(stop_out) - 1)
    period = [stop_out[i + 1] - stop_out[i] for i in range(n)]
    return {
        "tokens": length, "steps": n,
        "token_us": _median_us(period),
        "host_before_launch_us": _median_us([replay_in[i] - stop_out[i] for i in range(n)]),
        "of_which_prepare_inputs_us": _median_us([STAMPS["prep_out"][i] - prep_in[i] for i in range(n)]),
        "launch_us": _median_us([replay_out[i] - replay_in[i] for i in range(n)]),
        "host_after_launch_us": _median_us([stop_in[i + 1] - replay_out[i] for i in range(n)]),
        "wait_at_stop_check_us": _median_us([stop_out[i + 1] - stop_in[i + 1] for i in range(n)]),
        "graph_device_us": round(1e3 * statistics.median(s.elapsed_time(e) for s, e in EVENTS[-n:]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-1.7b", choices=sorted(SHAPES))
    parser.add_argument("--layout", default=None)
    parser.add_argument("--lengths", default="8k")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    if not hasattr(generation_utils, "StopCheck"):
        raise SystemExit(f"generate_loop.py times transformers' StopCheck (5.24+); this is transformers "
                         f"{transformers.__version__}")
    model = hylo_model_for(shape, args.layout or spaced(shape["num_hidden_layers"], "L128", 4, "G"), "cuda")
    _wrap(generation_utils.StopCheck, "__call__", "stop_in", "stop_out")
    _wrap(torch.cuda.CUDAGraph, "replay", "replay_in", "replay_out", events=True)
    _wrap(type(model), "prepare_inputs_for_generation", "prep_in", "prep_out")
    print(f"card {torch.cuda.get_device_name()}; hylo_model from {hylo_model.__file__}", flush=True)
    for length in (parse_tokens(x) for x in args.lengths.split(",")):
        print(json.dumps(run(model, length, args.new_tokens)), flush=True)


if __name__ == "__main__":
    main()
