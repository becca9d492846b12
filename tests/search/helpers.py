"""Helpers of the search tests: a tiny test study (random 4-layer Qwen3 teacher, no downloads) written to a
folder, and `hylo-search` run in a subprocess with the environment it needs."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[2]

BASE_STUDY = {
    "name": "t4",
    "teacher": "builtin:tiny-random",
    "data": {"source": "builtin:random", "heldout_sequences": 4, "heldout_length": 48},
    "space": {
        "name": "t4",
        "mixers": ["attention", "mla", "gdn"],
        "mla_ranks": [8],
        "counts": ["attention+mla between 1 and 3"],
        "budgets": ["cache_bytes@512 <= 60%"],
    },
    "target_length": 512,
    "upcycle": {"qk_rope_head_dim": 8},
    "proxy": {"kind": "upcycle_kl"},
    "probes": {"kind": "agreement", "lengths": [48], "samples": 2},
    "objectives": [{"metric": "proxy_kl", "direction": "minimize"},
                   {"metric": "cache_bytes", "direction": "minimize"}],
    "sampler": {"name": "tpe", "options": {"n_startup_trials": 4}},
    "trials": 6,
    "seed": 0,
    "replicates": {"seeds": 1},  # tests that need replicates turn them on
}


def merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def write_study(folder: Path, replace: dict | None = None, **overrides) -> Path:
    """The base test study with ``overrides`` merged in (nested mappings merge) and ``replace`` set as is."""
    data = {**merge(BASE_STUDY, overrides), **(replace or {})}
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli_env(runs: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HYLO_RUNS_DIR=str(runs), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled")
    return env


def hylo(args: list[str], cwd: Path, runs: Path, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    """Run `hylo-search ARGS` in a subprocess (the console script's module), capturing text output."""
    return subprocess.run([sys.executable, "-m", "hylo_search.cli", *args], cwd=cwd, env=cli_env(runs),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def brute_force_front(trials, directions):
    """Feasible COMPLETE trials that no other feasible COMPLETE trial dominates (written independently of Optuna)."""
    sign = [1 if d == "minimize" else -1 for d in directions]
    pool = [t for t in trials if t.state == TrialState.COMPLETE and all(v <= 0 for v in t.constraints.values())]

    def dominates(a, b):
        pa = [s * v for s, v in zip(sign, a.values)]
        pb = [s * v for s, v in zip(sign, b.values)]
        return all(x <= y for x, y in zip(pa, pb)) and any(x < y for x, y in zip(pa, pb))

    return sorted(t.number for t in pool if not any(dominates(o, t) for o in pool if o is not t))


def brute_force_ranking(trials, directions):
    """Trials best first, written independently of Optuna: successive Pareto fronts by pairwise dominance, each
    front by its first objective (in its direction) then trial number."""
    sign = [1 if d == "minimize" else -1 for d in directions]

    def dominates(a, b):
        pa, pb = [s * v for s, v in zip(sign, a.values)], [s * v for s, v in zip(sign, b.values)]
        return all(x <= y for x, y in zip(pa, pb)) and any(x < y for x, y in zip(pa, pb))

    rest, out = list(trials), []
    while rest:
        front = [t for t in rest if not any(dominates(o, t) for o in rest if o is not t)]
        out += sorted(front, key=lambda t: (sign[0] * t.values[0], t.number))
        rest = [t for t in rest if t not in front]
    return out
