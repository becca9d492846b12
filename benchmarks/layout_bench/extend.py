"""Extend the ground-truth layout table: promote layouts with a study's full recipe and append one row each.

    python benchmarks/layout_bench/extend.py --study small --source baseline --seeds 0
    python benchmarks/layout_bench/extend.py --study small --source random --per-stratum 3 --seeds 0,1
    python benchmarks/layout_bench/extend.py --study small --source front --layout A,G,... --layout ...

Each (layout, seed) is trained by ``hylo-search promote --layout-file`` (the same code), with the study's promotion
recipe and its seed set to ``seed``, then judged on the teacher's tokenized held-out split (perplexity) and on
fresh RULER prompts (probe seed :data:`PROBE_SEED` + seed, unlike the search's) at the study's probe lengths. Rows
already in the table are skipped; a row is appended (atomically: the whole table rewritten to a temporary file and
renamed) only once its layout is judged, so a killed run loses at most the layout in progress, whose training
resumes from its last checkpoint in ``--runs`` on the next run. ``--max-minutes`` stops before starting a layout
that would not finish in time (estimated from the slowest so far).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).parent
TABLE = HERE / "table.parquet"
PROBE_SEED = 2_000_003


def stratified_layouts(space: Any, per_stratum: int, seed: int, tries: int = 20000) -> list[list[str]]:
    """Feasible random layouts, ``per_stratum`` per number of attention + MLA layers (uniform draws, rejected
    until each stratum is full or ``tries`` run out), in stratum order."""
    rng = np.random.default_rng(seed)
    strata: dict[int, list[list[str]]] = {}
    for _ in range(tries):
        tokens = list(space.sample(rng))
        count = sum(t == "A" or t.startswith("L") for t in tokens)
        bucket = strata.setdefault(count, [])
        if len(bucket) < per_stratum and space.is_feasible(tokens) and tokens not in bucket:
            bucket.append(tokens)
    return [tokens for count in sorted(strata) for tokens in strata[count]]


def read_table(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist() if path.is_file() else []


def append_row(path: Path, row: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hylo_search.paths import atomic_path

    rows = read_table(path) + [row]
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)


def seeded_recipe(recipe_name: str, seed: int, folder: Path) -> Path:
    """The recipe with ``seed``, written into ``folder`` (its data comes from --data)."""
    from hylo_model.train import load_recipe

    recipe = load_recipe(recipe_name)
    data = yaml.safe_load(Path(recipe.source).read_text())
    data["seed"] = seed
    for source in (data.get("data") or {}).get("sources", []):
        if source.get("path"):
            source["path"] = str(recipe.resolve_path(source["path"]))
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def judge(final: Path, heldout: Path, tasks: list[str], lengths: list[int], samples: int, seed: int
          ) -> dict[str, Any]:
    """Held-out perplexity and probe scores of the promoted model in ``final``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hylo_model  # noqa: F401  (registers the HyLo model class with transformers)
    from hylo_search.probes import run_probes
    from hylo_search.small_teacher.evaluate import heldout_perplexity, read_heldout

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(final).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    row = {f"heldout_{k}": v for k, v in heldout_perplexity(model, read_heldout(heldout)).items()}
    result = run_probes(model, tokenizer, tasks=tasks, lengths=lengths, samples=samples, scorer="fast",
                        seed=PROBE_SEED + seed)
    for length in lengths:
        row[f"probe_accuracy@{length}"] = result.mean("score", length=length)
        row[f"probe_logprob@{length}"] = result.mean("logprob_mean", length=length)
    row["probe_samples"] = samples
    return row


def promote(layout: str, seed: int, study: Any, recipe: str, data: list[str], runs: Path) -> tuple[Path, int]:
    """Train ``layout`` through ``hylo-search promote --layout-file``; returns its final folder and its training
    tokens."""
    from hylo_model.train import load_recipe
    from hylo_search.cli import main as cli
    from hylo_search.define.layout_files import write_layout

    folder = runs / f"{layout.replace(',', '_')}-s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    definition = study.definition
    layout_file = write_layout(folder / "layout.yaml", layout, teacher=definition.teacher,
                               upcycle=definition.upcycle.options())
    recipe_file = seeded_recipe(recipe, seed, folder)
    args = ["promote", "--layout-file", str(layout_file), "--recipe", str(recipe_file), "--out", str(folder / "run"),
            "--progress", "off", "--log-with", "none"] + [a for d in data for a in ("--data", d)]
    code = cli(args)
    if code != 0:
        raise RuntimeError(f"promote {layout} seed {seed} exited {code}")
    tokens = sum(s.num_steps * s.batch_size * s.seq_len for s in load_recipe(str(recipe_file)).stages)
    return folder / "run" / "final", tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="small")
    parser.add_argument("--source", choices=("baseline", "random", "front"), required=True)
    parser.add_argument("--layout", action="append", default=[], help="layout code (with --source front)")
    parser.add_argument("--per-stratum", type=int, default=2, help="random layouts per attention+MLA count")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the stratified random draw")
    parser.add_argument("--seeds", default="0", help="comma list of training seeds")
    parser.add_argument("--limit", type=int, default=None, help="promote at most this many layouts this run")
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--recipe", default=None, help="default: the study's promotion recipe")
    parser.add_argument("--data", action="append", default=None,
                        help="training data (default: the study's data.source)")
    parser.add_argument("--heldout", type=Path, default=None,
                        help="tokenized held-out split (default: heldout.safetensors of the teacher's folder)")
    parser.add_argument("--probe-samples", type=int, default=32)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--runs", type=Path, default=Path("hylo_runs/layout_bench"))
    args = parser.parse_args(argv)

    from hylo_search.define.teachers import teacher_directory
    from hylo_search.space.baselines import baselines
    from hylo_search.study import load_study

    study = load_study(args.study)
    definition = study.definition
    if args.source == "baseline":
        layouts = [list(b.tokens) for b in baselines(study.space) if study.space.is_feasible(list(b.tokens))]
    elif args.source == "random":
        layouts = stratified_layouts(study.space, args.per_stratum, args.sample_seed)
    else:
        layouts = [code.split(",") for code in args.layout]
    recipe = args.recipe or definition.promotion.recipe
    data = args.data or [definition.data.source]
    heldout = args.heldout or teacher_directory(definition.teacher) / "heldout.safetensors"
    done = {(r["layout"], r["seed"]) for r in read_table(args.table)}
    todo = [(",".join(t), int(s)) for t in layouts for s in args.seeds.split(",")]
    todo = [item for item in todo if item not in done][:args.limit]
    print(f"{len(todo)} layouts to promote ({len(done)} rows in {args.table})")
    started, slowest = time.perf_counter(), 0.0
    for layout, seed in todo:
        if args.max_minutes and time.perf_counter() - started + slowest > args.max_minutes * 60:
            print("stopping: the next layout would not finish within --max-minutes; rerun to continue")
            break
        begin = time.perf_counter()
        final, tokens = promote(layout, seed, study, recipe, data, args.runs)
        row = {"layout": layout, "source": args.source, "seed": seed, "teacher": definition.teacher,
               "recipe": recipe, "tokens": tokens}
        row.update(judge(final, heldout, list(definition.probes.tasks), list(definition.probes.lengths),
                         args.probe_samples, seed))
        row["wall_seconds"] = round(time.perf_counter() - begin, 1)
        row["card"] = _card()
        row["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        append_row(args.table, row)
        slowest = max(slowest, row["wall_seconds"])
        print(json.dumps({k: row[k] for k in ("layout", "seed", "heldout_perplexity", "wall_seconds")}))
    return 0


def _card() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    sys.exit(main())
