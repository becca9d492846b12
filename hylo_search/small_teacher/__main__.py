"""``python -m hylo_search.small_teacher``: build the corpus, train (resumably) and ship ``builtin:small``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ASSETS = Path(__file__).parents[1] / "assets" / "small_teacher"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hylo_search.small_teacher",
                                     description="Train the small teacher (builtin:small); rerun to resume.")
    parser.add_argument("--work", type=Path, default=Path("hylo_runs/small_teacher"),
                        help="work folder: corpus, tokenizer, token files, checkpoints")
    parser.add_argument("--out", type=Path, default=ASSETS, help="where the finished teacher is written")
    parser.add_argument("--size", default="small", choices=("small", "tiny-smoke"))
    parser.add_argument("--tiny-smoke", action="store_true", help="same as --size tiny-smoke (a CPU test)")
    parser.add_argument("--packages", default=None, help="comma list of corpus packages (default: all)")
    parser.add_argument("--corpus-only", action="store_true", help="build the corpus, tokenizer and token files")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers building batches")
    parser.add_argument("--max-minutes", type=float, default=9.0, help="checkpoint and stop before this")
    parser.add_argument("--until", type=int, default=None, help="stop after this many steps in all")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from .evaluate import corpus_record, heldout_perplexity, probe_table, read_heldout, ship
    from .train import SIZES, prepare, train

    torch.set_num_threads(args.threads)
    size = "tiny-smoke" if args.tiny_smoke else args.size
    packages = args.packages.split(",") if args.packages else None
    if args.corpus_only:
        _, tokens, manifest = prepare(args.work, SIZES[size], packages)
        print(f"corpus {manifest['sha256'][:12]}: {len(tokens)} training tokens in {args.work}")
        return 0
    result = train(args.work, size, seed=args.seed, device=args.device, max_minutes=args.max_minutes,
                   until=args.until, workers=args.workers, packages=packages)
    if not result["done"]:
        print(f"step {result['step']}: not finished; rerun the same command to continue")
        return 0
    model = result["model"].eval()
    spec = result["size"]
    heldout = heldout_perplexity(model, read_heldout(args.work / "heldout.safetensors"))
    probes = probe_table(model, result["tokenizer"], spec.probe_tasks, spec.probe_lengths, spec.probe_samples)
    report = {"size": size, "seed": args.seed, "steps": result["step"], "stages": spec.stages, "lr": spec.lr,
              "train_seconds": result["seconds"], "corpus": corpus_record(result["manifest"]),
              "heldout": heldout, "probes": probes, "history": result["history"], "torch": torch.__version__,
              "command": "python -m hylo_search.small_teacher " + " ".join(sys.argv[1:] if argv is None else argv)}
    ship(args.out, args.work, result, report)
    print(json.dumps({"heldout": heldout, "probes": probes["accuracy"]}, indent=1))
    print(f"teacher written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
