"""``hylo-search probe MODEL_DIR --tasks niah_single_1,vt --lengths 1k,4k --samples 50``: RULER-style probes."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe", help="score a model on RULER-style long-context probes (offline)",
        description="Generate RULER probes (niah_*, vt, cwe, fwe) at exact lengths in the model's own tokens and "
        "score any transformers causal LM directory (HyLo or teacher). Prints a task x length table and writes "
        "JSON + Parquet.",
    )
    parser.add_argument("model", help="model directory (or hub id in the local cache) with its tokenizer")
    parser.add_argument("--tasks", default="niah_single_1", help="comma list, 'niah' or 'all' (default niah_single_1)")
    parser.add_argument("--lengths", default="4k", help="comma list of token lengths: 4096, 4k, 16k, 1m (default 4k)")
    parser.add_argument("--samples", type=int, default=50, help="samples per task and length (default 50)")
    parser.add_argument("--scorer", default="fast", choices=["fast", "generate"],
                        help="fast: one teacher-forced pass; generate: greedy decoding + RULER's string match")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default ./probe-results/<model name>)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--segment", type=int, default=8192, help="prefill segment in tokens (0: whole prompt)")
    parser.add_argument("--depth", type=float, default=None, help="pin needles at this depth (0..100) "
                        "instead of RULER's random placement")
    parser.add_argument("--haystack", default=None, help="essay text (.txt, or RULER's PaulGrahamEssays.json) "
                        "for the essay tasks (default: the shipped text)")
    parser.add_argument("--from-jsonl", default=None, help="score samples from this .jsonl file or folder "
                        "(ours or RULER's) instead of generating")
    parser.add_argument("--save-samples", default=None, help="also write the generated samples as JSONL here")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """Validate the cheap arguments before any heavy import."""
    from ..errors import UsageError
    from ..probes.tasks import parse_lengths, parse_tasks

    try:
        tasks, lengths = parse_tasks(args.tasks), parse_lengths(args.lengths)
    except ValueError as error:
        raise UsageError(f"--tasks/--lengths: {error}") from None
    if args.samples < 1:
        raise UsageError(f"--samples must be at least 1, got {args.samples}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.depth is not None and not 0 <= args.depth <= 100:
        raise UsageError(f"--depth must be within 0..100 (percent), got {args.depth}")
    for name in ("haystack", "from_jsonl"):
        value = getattr(args, name)
        if value is not None and not Path(value).exists():
            raise UsageError(f"--{name.replace('_', '-')}: {value} not found")
    from ._outputs import output_folder

    # The results are two files named after the scorer, added beside whatever the folder holds.
    output_folder(_out(args), "--out", lambda folder: True, "probe results")
    return tasks, lengths


def _out(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path("probe-results") / Path(args.model).name


def load_model(path: str, device: str | None, dtype: str | None):
    """Model + tokenizer from a directory; HyLo directories load because hylo_model registers itself."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hylo_model  # noqa: F401

    from ..errors import UsageError

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype) if dtype else "auto")
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"MODEL_DIR {path}: cannot load a causal LM and tokenizer ({reason})") from None
    return model.to(device).eval(), tokenizer


def run(args: argparse.Namespace) -> int:
    tasks, lengths = _check(args)
    from rich.console import Console
    from rich.progress import Progress

    from ..errors import UsageError
    from ..probes import (
        ProbeResults,
        generate_samples,
        read_jsonl,
        read_samples,
        save_results,
        score_samples,
        write_samples,
    )

    console = Console()
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    try:
        if args.from_jsonl:
            source = Path(args.from_jsonl)
            samples = read_jsonl(source) if source.is_file() else read_samples(source)
        else:
            samples = [s for task in tasks for n in lengths
                       for s in generate_samples(task, n, args.samples, tokenizer, args.seed, args.depth,
                                                 args.haystack)]
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.save_samples:
        write_samples(samples, args.save_samples)
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(f"probing ({args.scorer})", total=len(samples))
        records = score_samples(model, tokenizer, samples, args.scorer, args.batch_size, args.segment or None,
                                progress=lambda n: progress.advance(bar, n))
    config = {"model": str(args.model), "tasks": list(dict.fromkeys(s.task for s in samples)),
              "lengths": sorted({s.max_length for s in samples}), "samples": args.samples, "seed": args.seed,
              "scorer": args.scorer, "batch_size": args.batch_size, "segment_size": args.segment,
              "depth": args.depth, "haystack": args.haystack, "from_jsonl": args.from_jsonl}
    results = ProbeResults(records, args.scorer, config)
    console.print(results.table(title=f"{Path(args.model).name}: {args.scorer} scorer, % (n={args.samples})"))
    if args.scorer == "fast":
        console.print(results.table("logprob_mean"))
    json_path, parquet_path = save_results(results, _out(args))
    per_sample = sum(r["seconds"] for r in records) / len(records)
    console.print(f"mean {100 * results.mean():.1f}%, {per_sample:.2f} s per sample  ->  {json_path}  {parquet_path}")
    return 0
