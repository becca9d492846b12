"""Block library cost at Qwen3-1.7B shape (random-weight teacher): one layer's library entry per mixer, and
assembled layouts scored per GPU-hour.

One command, one card, one process. The teacher is a Qwen3ForCausalLM with the dimensions of Qwen3-1.7B and random
weights (bf16 on the GPU), saved to a temporary folder and used as a study's teacher, so that everything below is
the code `hylo-search library` / `study` run (:mod:`hylo_search.library`, the ``assembled`` proxy):

* **entry**: for each mixer (MLA at each ``--ranks``, GDN, Mamba2), one layer's library entry built from nothing —
  the teacher-initialised conversion (MLA: SVD), the align stage of ``--recipe`` (default the search's GPU proxy
  recipe, ``proxy_small``: target both, L2 loss, seq 2048) rescaled to ``--tokens``, and its sensitivity (the
  teacher with that block swapped in: held-out KL, agreement probe drop at ``--probe-length``);
* **scoring**: ``--layouts`` random layouts of the space (attention, MLA at each rank, GDN, Mamba2 per layer) built
  from library blocks and scored like a first-tier trial (assemble, held-out KL, agreement probe). Scoring cost does
  not depend on the blocks' weights, so the blocks it needs beyond the trained ones are the untrained conversions.

Prints a markdown table to paste into benchmarks/RESULTS.md with the date, card and command:

    python benchmarks/block_library.py                            # H100/H200, ~2M align tokens per entry
    python benchmarks/block_library.py --tokens 5000000 --layouts 16
    python benchmarks/block_library.py --device cpu               # tiny dims: checks the script, measures nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Qwen3-1.7B's config.json (28 layers, GQA 16/8, head_dim 128, tied embeddings, rope_theta 1e6).
QWEN3_1P7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rms_norm_eps=1e-6, tie_word_embeddings=True,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
TINY = dict(QWEN3_1P7B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: tiny dims (a smoke run of the script, no meaningful numbers)")
    parser.add_argument("--tokens", type=int, default=None, help="align tokens per entry (default 2M; cpu 2048)")
    parser.add_argument("--recipe", default=None, help="library recipe (default proxy_small; cpu proxy_tiny)")
    parser.add_argument("--ranks", type=int, nargs="+", default=None, help="MLA ranks (default 256 512; cpu 8 16)")
    parser.add_argument("--layer", type=int, default=None, help="the layer whose entries are built (default middle)")
    parser.add_argument("--heldout", type=int, nargs=2, default=None, metavar=("SEQS", "LEN"),
                        help="held-out sequences and length for KL (default 8 1024; cpu 4 64)")
    parser.add_argument("--probe-length", type=int, default=None, help="agreement probe length (default 4096)")
    parser.add_argument("--probe-samples", type=int, default=4)
    parser.add_argument("--layouts", type=int, default=8, help="assembled layouts to score")
    parser.add_argument("--no-warmup", action="store_true",
                        help="time each entry cold (default: first build every block once at another layer, "
                             "untimed, so Triton autotuning and cuBLAS heuristics are not counted in the entry)")
    parser.add_argument("--json-out", default=None, help="also write the measurements as JSON")
    args = parser.parse_args()
    cpu = args.device == "cpu"
    args.tokens = args.tokens or (2048 if cpu else 2_000_000)
    args.recipe = args.recipe or ("proxy_tiny" if cpu else "proxy_small")
    args.ranks = args.ranks or ([8, 16] if cpu else [256, 512])
    args.heldout = args.heldout or ([4, 64] if cpu else [8, 1024])
    args.probe_length = args.probe_length or (128 if cpu else 4096)
    return args


def write_teacher(shape: dict, device: str, folder: Path) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(Qwen3Config(**shape)).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    del model


def write_recipe(name: str, folder: Path) -> Path:
    """The named recipe with a held-out split that exists on the benchmark's in-memory random documents (the
    shipped GPU recipes hold out 0.1 % of a web corpus, which is no document at all here)."""
    from hylo_model.train.recipe import shipped_recipes

    source = Path(name) if Path(name).is_file() else shipped_recipes()[name]
    raw = yaml.safe_load(source.read_text())
    raw.setdefault("data", {})["eval_fraction"] = max(0.1, raw["data"].get("eval_fraction", 0.0))
    raw.setdefault("eval", {})["sequences"] = min(4, raw["eval"].get("sequences", 4))
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def write_study(args: argparse.Namespace, folder: Path, teacher: Path) -> Path:
    study = {
        "name": "block_library_bench", "teacher": str(teacher),
        "data": {"source": "builtin:random", "heldout_sequences": args.heldout[0], "heldout_length": args.heldout[1]},
        "space": {"name": "bench", "mixers": "all", "mla_ranks": args.ranks},
        "target_length": args.probe_length,
        "proxy": {"kind": "assembled"},
        "probes": {"kind": "agreement", "lengths": [args.probe_length], "samples": args.probe_samples},
        "library": {"recipe": str(write_recipe(args.recipe, folder)), "tokens": args.tokens},
        "objectives": [{"metric": "proxy_kl", "direction": "minimize"},
                       {"metric": "cache_bytes", "direction": "minimize"}],
        "executor": {"name": "local", "resources": {"num_gpus": 1 if args.device == "cuda" else 0}},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def build_entries(runtime, tokens: list[str], layer: int, device: str) -> list[dict]:
    """Each token's entry at ``layer``, from nothing (conversion, align training, sensitivity)."""
    rows = []
    for token in tokens:
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        record = runtime.library.build(token, [layer])
        _sync(device)
        total = time.perf_counter() - began
        row = record["rows"][0]
        rows.append({"token": token, "total_s": total, "train_s": row["train_s"],
                     "sensitivity_s": row["sensitivity_s"],
                     "convert_s": total - row["train_s"] - row["sensitivity_s"],
                     "tokens": row["train_tokens"], "steps": row["train_steps"], "kl": row["kl"],
                     "align_before": row["align_before"], "align_after": row["align_after"],
                     "peak_gib": _peak(device)})
        print(f"entry {token}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    return rows


def fill_blocks(runtime, tokens: list[str]) -> None:
    """Blocks for every (layer, token) scored below that the entry step did not train: the untrained conversions
    (scoring cost does not depend on the weights)."""
    from hylo_search.worker.converted import save_mixer

    library = runtime.library
    count = runtime.teacher.config.num_hidden_layers
    for token in tokens:
        if all(library.block_path(i, token).is_file() for i in range(count)):
            continue
        student, _ = library.init_cache.build(runtime.teacher, [token] * count)
        for i in range(count):
            if not library.block_path(i, token).is_file():
                save_mixer(student.model.layers[i].mixer, library.block_path(i, token))
        del student


def score_layouts(runtime, tokens: list[str], count: int, device: str) -> dict:
    from hylo_search.scoring import TrialContext

    generator = torch.Generator().manual_seed(0)
    choices = ["A", *tokens]
    layers = runtime.teacher.config.num_hidden_layers
    layouts = [[choices[int(k)] for k in torch.randint(len(choices), (layers,), generator=generator)]
               for _ in range(count + 1)]
    proxy = runtime.proxy_for({"kind": "assembled"})
    timings = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for index, layout in enumerate(layouts):  # the first layout warms up (held-out set, probe prompts)
        ctx = TrialContext(runtime, layout, 0, index)
        _sync(device)
        began = time.perf_counter()
        result = proxy(ctx)
        _sync(device)
        scored = time.perf_counter()
        runtime.probes(ctx, result.model)
        _sync(device)
        done = time.perf_counter()
        if index:
            timings.append({"assemble_s": ctx.timings["assemble_s"],
                            "kl_s": scored - began - ctx.timings["assemble_s"], "probe_s": done - scored,
                            "total_s": done - began})
        del result, ctx
    mean = {k: sum(t[k] for t in timings) / len(timings) for k in timings[0]}
    return {**mean, "per_gpu_hour": 3600 / mean["total_s"], "layouts": count, "peak_gib": _peak(device)}


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu for a smoke run")
    from hylo_search.study import load_study
    from hylo_search.worker.runtime import StudyRuntime

    shape = TINY if args.device == "cpu" else QWEN3_1P7B
    layer = args.layer if args.layer is not None else shape["num_hidden_layers"] // 2
    tokens = [f"L{r}" for r in args.ranks] + ["G", "M"]
    with tempfile.TemporaryDirectory(prefix="hylo-block-library-") as tmp:
        folder = Path(tmp)
        began = time.perf_counter()
        write_teacher(shape, args.device, folder / "teacher")
        loaded = load_study(write_study(args, folder, folder / "teacher"))
        runtime = StudyRuntime(loaded.resolved(), folder / "run")
        setup = time.perf_counter() - began
        print(f"setup (teacher written and loaded, study resolved) {setup:.1f} s", file=sys.stderr, flush=True)
        if not args.no_warmup:
            warm = build_entries(runtime, tokens, (layer + 1) % shape["num_hidden_layers"], args.device)
            print(f"warm-up entries (untimed) {sum(r['total_s'] for r in warm):.1f} s", file=sys.stderr, flush=True)
        entries = build_entries(runtime, tokens, layer, args.device)
        fill_blocks(runtime, tokens)
        scoring = score_layouts(runtime, tokens, args.layouts, args.device)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU smoke run (tiny dims; not a measurement)"
    recipe = runtime.library.recipe.stages[0]
    print(f"\n{card}, torch {torch.__version__}; teacher {'Qwen3-1.7B shape' if args.device == 'cuda' else 'tiny'} "
          f"(random, {runtime.dtype}); setup {setup:.0f} s")
    print(f"entry = conversion + align ({args.recipe}: target {recipe.target}, loss {recipe.loss}, "
          f"seq {recipe.seq_len}, batch {recipe.batch_size}) on {args.tokens:,} tokens + sensitivity (held-out KL on "
          f"{args.heldout[0]}x{args.heldout[1]} tokens, agreement probe {args.probe_samples}x{args.probe_length}); "
          f"layer {layer}; {'cold' if args.no_warmup else 'after one untimed build of each block at another layer'}\n")
    print("| block | entry s | convert s | align s (steps) | align tok/s | sensitivity s | peak GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in entries:
        rate = row["tokens"] / row["train_s"] if row["train_s"] else float("nan")
        print(f"| {row['token']} | {row['total_s']:.1f} | {row['convert_s']:.1f} | {row['train_s']:.1f} "
              f"({row['steps']}) | {rate:,.0f} | {row['sensitivity_s']:.2f} | {_gib(row['peak_gib'])} |")
    full = sum(r["total_s"] for r in entries) * shape["num_hidden_layers"] / 3600
    print(f"\nwhole library ({shape['num_hidden_layers']} layers x {len(tokens)} blocks, one layer per task): "
          f"~{full:.2f} GPU-hours at these rates\n")
    print("| assembled scoring | assemble s | held-out KL s | probe s | total s | layouts / GPU-hour | peak GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {scoring['layouts']} random layouts | {scoring['assemble_s']:.2f} | {scoring['kl_s']:.2f} | "
          f"{scoring['probe_s']:.2f} | {scoring['total_s']:.2f} | {scoring['per_gpu_hour']:,.0f} | "
          f"{_gib(scoring['peak_gib'])} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"card": card, "args": vars(args), "entries": entries,
                                                   "scoring": scoring}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
