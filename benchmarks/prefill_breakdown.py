"""Where a one-shot prefill spends its time: the teacher and a HyLo layout, per part of the block and per kernel.

    python benchmarks/prefill_breakdown.py --length 128k

One forward of ``--length`` tokens (``logits_to_keep=1``, bf16, random weights at the ``--shape`` dimensions of
``long_context.py``), after a warm-up at the same length. Module time is measured with CUDA events around every
mixer (the teacher's ``self_attn``), MLP and the whole forward; "rest" is embeddings, norms, residual adds and the
head. A second forward runs under ``torch.profiler`` and lists the kernels that take the most GPU time. ``--device
cpu`` runs the tiny shape at 512 tokens, as a check of the script (it measures nothing).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from long_context import SHAPES, hylo_model_for, parse_tokens, spaced, teacher_model

import hylo_model


class ModuleTimer:
    """Time stamps before and after each hooked module's forward (CUDA events on a GPU, so nothing syncs inside the
    forward; host clocks on the CPU), summed per label once the run is over."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.pairs: list[list] = []
        self.handles = []

    def _stamp(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def hook(self, module: torch.nn.Module, label: str) -> None:
        def before(*_):
            self.pairs.append([label, self._stamp(), None])

        def after(*_):
            next(pair for pair in reversed(self.pairs) if pair[0] == label and pair[2] is None)[2] = self._stamp()

        self.handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def totals(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = defaultdict(float)
        for label, start, end in self.pairs:
            out[label] += start.elapsed_time(end) / 1e3 if self.cuda else end - start
        return dict(out)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def parts(model) -> list[tuple[torch.nn.Module, str]]:
    """(module, label) for each layer's mixer and MLP: HyLo mixers are labelled by type, the teacher's by 'attention'."""
    inner = model.model
    out = []
    for layer in inner.layers:
        mixer = getattr(layer, "mixer", None)
        label = f"mixer: {type(mixer).__name__}" if mixer is not None else "mixer: attention (teacher)"
        out += [(mixer if mixer is not None else layer.self_attn, label), (layer.mlp, "mlp")]
    return out


@torch.no_grad()
def breakdown(model, length: int, device: str, top: int) -> tuple[dict[str, float], str]:
    """Module totals (seconds) and the profiler's kernel table for one forward of ``length`` tokens, filling a cache
    as ``long_context.py``'s prefill does (the teacher its DynamicCache, HyLo a preallocated HyLoCache)."""
    ids = torch.randint(0, model.config.vocab_size, (1, length), device=device)

    def forward():
        if isinstance(model, hylo_model.HyLoForCausalLM):
            cache = hylo_model.HyLoCache(model.config, max_length=length + 1)
            return model(ids, cache=cache, use_cache=True, logits_to_keep=1)
        return model(ids, use_cache=True, logits_to_keep=1)

    forward()  # warm-up: autotuning, cuBLAS heuristics
    timer = ModuleTimer(device)
    for module, label in parts(model):
        timer.hook(module, label)
    timer.hook(model, "forward (total)")
    forward()
    totals = timer.totals()
    timer.remove()
    totals["rest"] = totals["forward (total)"] - sum(v for k, v in totals.items() if k != "forward (total)")
    cuda = device.startswith("cuda")
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        forward()
        torch.cuda.synchronize() if cuda else None
    table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "self_cpu_time_total", row_limit=top,
                                      max_name_column_width=70)
    return totals, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-1.7b", choices=sorted(SHAPES))
    parser.add_argument("--layout", default=None, help="layout code (default: 4 MLA + 24 GDN, as long_context.py)")
    parser.add_argument("--length", default="128k")
    parser.add_argument("--top", type=int, default=15, help="kernels listed per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = args.device
    shape = SHAPES[args.shape] if device == "cuda" else SHAPES["tiny"]
    length = parse_tokens(args.length) if device == "cuda" else 512
    mla = "L128" if shape["hidden_size"] >= 1024 else "L16"
    layout = args.layout or spaced(shape["num_hidden_layers"], mla, 4 if device == "cuda" else 1, "G")
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu (tiny shape: a check of the script, not a measurement)"
    print(f"{card}, torch {torch.__version__}; {length:,} tokens, one forward; layout {layout}")
    results = {}
    for name, build in (("teacher", lambda: teacher_model(shape, device)),
                        ("hylo", lambda: hylo_model_for(shape, layout, device))):
        model = build()
        totals, table = breakdown(model, length, device, args.top)
        results[name] = totals
        print(f"\n## {name}\n\n| part | s | share |\n|---|---|---|")
        whole = totals["forward (total)"]
        for label, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"| {label} | {seconds:.3f} | {100 * seconds / whole:.0f} % |")
        print(f"\n```\n{table}\n```", flush=True)
        model = None
        torch.cuda.empty_cache() if device == "cuda" else None
    ratio = results["teacher"]["forward (total)"] / results["hylo"]["forward (total)"]
    print(f"\nprefill speed-up (teacher time / hylo time, same run): {ratio:.2f}x")


if __name__ == "__main__":
    main()
