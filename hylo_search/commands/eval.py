"""``hylo-search eval MODEL_DIR --suite short|long``: lm-eval on a finished model (HyLo or any HF causal LM)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="run lm-eval suites (short: standard 0/5-shot sets; long: the probe tasks)",
        description="Evaluate a model directory with lm-eval's hf model (HyLo registered). 'short' runs piqa, "
        "arc_easy, arc_challenge, hellaswag, winogrande, openbookqa, boolq, lambada_openai (0-shot) and gsm8k "
        "(5-shot, flexible-extract) on the datasets found locally and lists the missing ones; 'long' runs the "
        "hylo_* probe tasks at --lengths. For anything else use python -m hylo_search.probes.lm_eval_cli.",
    )
    parser.add_argument("model", help="model directory (with its tokenizer)")
    parser.add_argument("--suite", default="short", choices=["short", "long"])
    parser.add_argument("--tasks", default=None, help="instead of the suite: comma list of lm-eval task names "
                        "(hylo_<probe> for the probes)")
    parser.add_argument("--probe-tasks", default="all", help="long suite: probe tasks (default all)")
    parser.add_argument("--lengths", default="4k", help="long suite: comma list of token lengths (default 4k)")
    parser.add_argument("--samples", type=int, default=50, help="long suite: samples per task and length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="at most this many documents per task")
    parser.add_argument("--batch-size", type=int, default=1, help="lm-eval batch size (1 is safe for recurrent "
                        "layers; larger batches are left-padded)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-length", type=int, default=None, help="context the model may use (default: the "
                        "longest probe for 'long', else lm-eval's guess from the config)")
    parser.add_argument("--allow-download", action="store_true", help="let lm-eval download missing datasets "
                        "(default: offline, local cache only)")
    parser.add_argument("--out", default=None, help="write the results JSON here (default ./eval-results/<name>)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..probes.tasks import parse_lengths, parse_tasks

    try:
        probe_tasks, lengths = parse_tasks(args.probe_tasks), parse_lengths(args.lengths)
    except ValueError as error:
        raise UsageError(f"--probe-tasks/--lengths: {error}") from None
    if args.samples < 1:
        raise UsageError(f"--samples must be at least 1, got {args.samples}")
    if not Path(args.model).exists():
        raise UsageError(f"MODEL_DIR {args.model} not found")
    from ._outputs import output_file

    path = Path(args.out) if args.out else Path("eval-results") / Path(args.model).name / f"lm_eval_{args.suite}.json"
    if path.suffix != ".json":
        path = path / f"lm_eval_{args.suite}.json"
    output_file(path, "--out", _is_result, "results file")

    import json

    import torch
    from rich.console import Console
    from rich.table import Table

    from ..probes.evaluation import headline, run_lm_eval, suite_tasks
    from ..probes.io import atomic_path

    console = Console()
    if args.tasks:
        names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        tasks = {t: 5 if t == "gsm8k" else 0 for t in names}
    else:
        tasks = suite_tasks(args.suite, probe_tasks)
    metadata = {"tokenizer": str(args.model), "pretrained": str(args.model), "max_seq_lengths": lengths,
                "num_samples": args.samples, "seed": args.seed}
    uses_probes = any(t.startswith("hylo_") for t in tasks)
    max_length = args.max_length or (max(lengths) if uses_probes else None)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = run_lm_eval(args.model, tasks, metadata=metadata, batch_size=args.batch_size, device=device,
                      dtype=args.dtype, max_length=max_length, limit=args.limit, allow_download=args.allow_download)
    if out["missing"]:
        console.print(f"[yellow]missing ({len(out['missing'])} of {len(tasks)}; not in the local cache — run once "
                      "with --allow-download, or set HF_DATASETS_CACHE):[/yellow]")
        for name, reason in out["missing"].items():
            console.print(f"  {name}: {reason}")
    if not out["ran"]:
        console.print("[red]nothing to evaluate: no task's data is available locally[/red]")
        return 1
    table = Table(title=f"{Path(args.model).name}: lm-eval ({args.suite if not args.tasks else 'tasks'})")
    table.add_column("task")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for task, row in headline(out["results"]).items():
        for metric, value in row.items():
            table.add_row(task, metric, f"{value:.4f}")
    console.print(table)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")
    console.print(f"-> {path}")
    return 0


def _is_result(path: Path) -> bool:
    """Whether ``path`` is a results file this command wrote (so a rerun may replace it)."""
    import json

    try:
        data = json.loads(path.read_text()) if path.stat().st_size < 1 << 26 else None
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"results", "missing", "ran", "versions"} <= set(data)
