"""RULER-style long-context probes, generated offline, and their scorers.

Quick use (any transformers causal LM; ``import hylo_model`` first so HyLo directories load)::

    from hylo_search.probes import run_probes
    results = run_probes(model, tokenizer, tasks="niah_single_1,vt", lengths="1k,4k", samples=20, scorer="fast")
    results.mean()          # one number for a search objective (mean over task × length cells, 0..1)
    results.summary()       # {task: {length: score}}
    print_table(results)    # or results.table() for a rich Table

Modules: :mod:`.tasks` (RULER's templates and settings), :mod:`.generate` (samples at exact token lengths),
:mod:`.metrics` (RULER's string matches), :mod:`.scoring` (segmented prefill, greedy decoding, teacher forcing),
:mod:`.runner` (:func:`run_probes`, :class:`ProbeResults`), :mod:`.io` (JSONL / JSON / Parquet),
:mod:`.oracle` (solve a sample by string search), :mod:`.evaluation` (lm-eval task folder ``TASK_DIR``, suites),
:mod:`.lm_eval_cli` (lm-eval's command line with HyLo registered).
"""

from .evaluation import TASK_DIR
from .generate import Sample, count_tokens, generate_sample, generate_samples, render_answer, sample_seed
from .io import load_results, read_jsonl, read_samples, save_results, write_jsonl, write_samples
from .metrics import postprocess_pred, string_match_all, string_match_part
from .oracle import solve
from .runner import SCORERS, ProbeResults, run_probes, score_samples
from .tasks import TASKS, TaskSpec, format_length, get_task, parse_length, parse_lengths, parse_tasks


def print_table(results: ProbeResults, metric: str = "score") -> None:
    """Print ``results`` as a task × length table on the terminal."""
    from rich.console import Console

    Console().print(results.table(metric))


__all__ = [
    "SCORERS", "TASKS", "TASK_DIR", "ProbeResults", "Sample", "TaskSpec", "count_tokens", "format_length",
    "generate_sample",
    "generate_samples", "get_task", "load_results", "parse_length", "parse_lengths", "parse_tasks",
    "postprocess_pred", "print_table", "read_jsonl", "read_samples", "render_answer", "run_probes", "sample_seed",
    "save_results", "score_samples", "solve", "string_match_all", "string_match_part", "write_jsonl",
    "write_samples",
]
