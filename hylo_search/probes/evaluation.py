"""lm-eval for finished models: the shipped probe task folder, the standard suites, and a runner that says which
datasets are missing instead of failing on the first.

* ``TASK_DIR`` holds the ``hylo_<task>`` probe tasks (and the ``hylo_ruler`` group); pass it as
  ``--include_path`` / ``TaskManager(include_path=...)``.
* ``SUITES["short"]``: piqa, arc_easy, arc_challenge, hellaswag, winogrande, openbookqa, boolq, lambada_openai
  (0-shot) and gsm8k (5-shot, its ``flexible-extract`` filter is the headline); ``SUITES["long"]``: the probe
  tasks at the lengths asked.
* HyLo models load through lm-eval's ``hf`` model once :mod:`hylo_model` is imported (it registers with the
  Auto classes); :func:`run_lm_eval` imports it, and ``python -m hylo_search.probes.lm_eval_cli`` is lm-eval's own
  command line with the import done and ``TASK_DIR`` on the include path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .tasks import TASKS

TASK_DIR = Path(__file__).parent / "lm_eval_tasks"

# task -> few-shot count
SHORT_SUITE = {"piqa": 0, "arc_easy": 0, "arc_challenge": 0, "hellaswag": 0, "winogrande": 0, "openbookqa": 0,
               "boolq": 0, "lambada_openai": 0, "gsm8k": 5}
SUITES = ("short", "long")


def probe_task_name(task: str) -> str:
    """``niah_single_1`` -> ``hylo_niah_single_1`` (lm-eval ships its own ``niah_single_1``; ours keeps RULER's
    settings, our haystack and per-length metrics)."""
    return f"hylo_{task}"


def task_manager(metadata: dict[str, Any] | None = None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASK_DIR), metadata=metadata)


def check_tasks(names: list[str], manager) -> tuple[list[str], dict[str, str]]:
    """Split ``names`` into those whose data loads now and ``{name: why not}`` for the rest (each task is built on
    its own, so one missing dataset does not hide the others)."""
    ok, missing = [], {}
    for name in names:
        try:
            manager.load([name])
            ok.append(name)
        except Exception as error:  # noqa: BLE001 - any failure to load means "not available here"
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            missing[name] = reason
    return ok, missing


def run_lm_eval(
    model: Any,
    tasks: dict[str, int],
    *,
    tokenizer: Any = None,
    metadata: dict[str, Any] | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    dtype: str | None = None,
    max_length: int | None = None,
    limit: int | None = None,
    allow_download: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` (a directory / hub id, or a loaded model with ``tokenizer``) on ``tasks``
    (``{lm-eval task: num_fewshot}``) with lm-eval's ``hf`` model.

    Unless ``allow_download``, datasets are looked up offline (``HF_DATASETS_OFFLINE=1``). Returns
    ``{"results": {...}, "missing": {task: reason}, "ran": [...]}``; tasks whose data is missing are skipped."""
    if not allow_download:
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    import hylo_model  # noqa: F401  (registers HyLo with the Auto classes so "hf" loads it)

    manager = task_manager(metadata)
    ran, missing = check_tasks(list(tasks), manager)
    out: dict[str, Any] = {"results": {}, "missing": missing, "ran": ran, "versions": {}}
    if not ran:
        return out
    args: dict[str, Any] = {"batch_size": batch_size, "device": device}
    if dtype:
        args["dtype"] = dtype
    if max_length:
        args["max_length"] = max_length
    if isinstance(model, (str, os.PathLike)):
        lm = HFLM(pretrained=str(model), tokenizer=tokenizer, **args)
    else:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, **{k: v for k, v in args.items() if k != "dtype"})
    by_shots: dict[int, list[str]] = {}
    for name in ran:
        by_shots.setdefault(tasks[name], []).append(name)
    for shots, names in sorted(by_shots.items()):
        result = simple_evaluate(model=lm, tasks=names, num_fewshot=shots or None, task_manager=manager,
                                 limit=limit, bootstrap_iters=0, log_samples=False)
        out["results"].update(result["results"])
        out["versions"].update(result.get("versions", {}))
    return out


def suite_tasks(suite: str, probe_tasks: list[str] | None = None) -> dict[str, int]:
    """``{lm-eval task: num_fewshot}`` for a suite (``long`` uses ``probe_tasks``, default all)."""
    if suite == "short":
        return dict(SHORT_SUITE)
    if suite == "long":
        return {probe_task_name(t): 0 for t in (probe_tasks or list(TASKS))}
    raise ValueError(f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")


def headline(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` with lm-eval's ``metric,filter`` keys flattened to the usual headline:
    ``acc``/``acc_norm``/``exact_match,flexible-extract``/``score`` and per-length scores."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        row = {}
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or "_stderr" in key or key in ("alias", "sample_len"):
                continue
            metric, _, filt = key.partition(",")
            if task == "gsm8k" and filt != "flexible-extract":
                continue
            row[metric] = float(value)
        if row:
            out[task] = row
    return out
