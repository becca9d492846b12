"""The exact assembly solver against brute force over small spaces, its diverse pool, and the greedy pick."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hylo_search.library.build import plan_tasks
from hylo_search.library.solver import block_scores, greedy, layout_score, library_entries, solve, solve_pool
from hylo_search.study import load_study

from .helpers import write_study

SPACES = {
    "per-layer": {"mixers": "all", "mla_ranks": [8, 16], "counts": ["attention+mla between 1 and 3"],
                  "budgets": ["cache_bytes@512 <= 45%", "params <= 1.2x"]},
    "global-rank": {"mixers": ["attention", "mla", "gdn"], "mla_ranks": [8, 16], "rank_scope": "global",
                    "counts": ["gdn <= 2"], "budgets": ["cache_bytes@512 <= 60%"]},
    "fixed-layer": {"mixers": ["attention", "mla", "mamba2"], "mla_ranks": [8], "fixed": {0: "M"},
                    "counts": ["attention >= 1"], "budgets": ["cache_bytes@512 <= 70%"]},
}


@pytest.fixture(scope="module", params=list(SPACES))
def space(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("assembly")
    return load_study(write_study(folder, space=SPACES[request.param])).space


def _scores(space, seed):
    rng = np.random.default_rng(seed)
    return {entry: float(rng.uniform(0.01, 1.0)) for entry in library_entries(space)}


def _cache(space, tokens):
    return space.costs.layout_cache(tokens, 512)


def _all_feasible(space, limit=None):
    """Every feasible layout, enumerated independently of the solver (and under a cache limit in bytes)."""
    layouts = []
    for combo in itertools.product(*space.choices):
        ranks = space.global_ranks or [None]
        for rank in ranks:
            tokens = [f"L{rank}" if t == "L" else t for t in combo]
            if space.is_feasible(tokens) and (limit is None or _cache(space, tokens) <= limit):
                layouts.append(tokens)
    return {",".join(t): t for t in layouts}.values()


def _hamming(a, b):
    return sum(x != y for x, y in zip(a, b))


@pytest.mark.parametrize("seed", range(4))
def test_the_solver_finds_the_brute_force_optimum_and_beats_greedy(space, seed):
    scores = _scores(space, seed)
    feasible = list(_all_feasible(space))
    best = min(feasible, key=lambda t: layout_score(t, scores))
    tokens, score = solve(space, scores)
    assert space.is_feasible(tokens)
    assert score == pytest.approx(layout_score(tokens, scores)) == pytest.approx(layout_score(best, scores))
    picked = greedy(space, scores)
    if picked is not None:
        assert space.is_feasible(picked)
        assert score <= layout_score(picked, scores) + 1e-12
    print(f"seed {seed}: solver {score:.4f}, greedy {layout_score(picked, scores) if picked else float('nan'):.4f}")


def test_greedy_can_be_strictly_worse(tmp_path):
    """The solver's reason to exist: on some score tables the greedy pick is not optimal (here seed 7)."""
    space = load_study(write_study(tmp_path, space={"mixers": "all", "mla_ranks": [8, 16]})).space
    gaps = []
    for seed in range(12):
        scores = _scores(space, seed)
        picked = greedy(space, scores)
        gaps.append(layout_score(picked, scores) - solve(space, scores)[1] if picked else 0.0)
    assert min(gaps) >= -1e-12 and max(gaps) > 1e-6


@pytest.mark.parametrize("distance", [1, 2])
def test_the_pool_is_diverse_budgeted_and_optimal_in_turn(space, distance):
    scores = _scores(space, 7)
    pool = solve_pool(space, scores, 5, min_distance=distance)
    assert pool
    remaining = list(_all_feasible(space))
    taken = []
    for item in pool:
        tokens = list(item.tokens)
        assert space.is_feasible(tokens) and item.score == pytest.approx(layout_score(tokens, scores))
        assert all(_hamming(tokens, other) >= distance for other in taken)
        # Each member is the best layout at least `distance` layers from every earlier one (brute force).
        allowed = [t for t in remaining if all(_hamming(t, other) >= distance for other in taken)]
        assert item.score == pytest.approx(min(layout_score(t, scores) for t in allowed))
        taken.append(tokens)


def test_pool_cache_levels_each_hold_their_budget(space):
    scores = _scores(space, 3)
    teacher = _cache(space, space.teacher_tokens)
    pool = solve_pool(space, scores, 6, min_distance=1, cache_ratios=[0.3, 0.5], target_length=512)
    assert {item.cache_ratio for item in pool} <= {0.3, 0.5}
    for item in pool:
        assert _cache(space, list(item.tokens)) <= item.cache_ratio * teacher
        best = min(layout_score(t, scores) for t in _all_feasible(space, item.cache_ratio * teacher))
        assert item.score >= best - 1e-12
    first = {item.cache_ratio: item for item in reversed(pool)}  # the first layout of each level is its optimum
    for ratio, item in first.items():
        best = min(layout_score(t, scores) for t in _all_feasible(space, ratio * teacher))
        assert item.score == pytest.approx(best)


def test_an_impossible_budget_gives_an_empty_pool(space):
    assert solve_pool(space, _scores(space, 0), 4, cache_ratios=[1e-6], target_length=512) == []
    assert solve(space, _scores(space, 0), cache_ratio=1e-6, target_length=512) is None


def test_scores_come_from_sensitivity_rows_and_missing_ones_are_named(space):
    rows = [{"layer": i, "token": t, "kl": 0.1 * (i + 1), "probe_drop": 0.5} for i, t in library_entries(space)]
    scores = block_scores(rows, kl_weight=2.0, probe_weight=0.1)
    layer, token = library_entries(space)[0]
    assert scores[(layer, token)] == pytest.approx(2.0 * 0.1 * (layer + 1) + 0.05)
    with pytest.raises(ValueError, match=f"no score for layer {layer} \\({token}\\)"):
        solve(space, {k: v for k, v in scores.items() if k != (layer, token)})


def test_an_ablation_grid_lists_the_blocks_its_layouts_use(tmp_path):
    loaded = load_study(write_study(tmp_path, name="abl", replace={"sampler": {"name": "grid"}}, space={
        "ablation": {"placement": ["uniform", "end"], "keep": ["attention", "mla"], "n_keep": [1],
                     "linear": ["gdn"], "mla_rank": [8]}}))
    used = {(i, t) for tokens in loaded.space.iter_tokens() for i, t in enumerate(tokens) if t != "A"}
    assert set(library_entries(loaded.space)) == used and (3, "L8") in used


def test_library_tasks_cover_every_entry_once():
    entries = [(i, t) for i in range(6) for t in ("G", "L8", "M")]
    for capacity, per_task in [(1, None), (4, None), (16, None), (2, 4)]:
        tasks = plan_tasks(entries, capacity, per_task)
        covered = [(i, token) for token, layers in tasks for i in layers]
        assert sorted(covered) == sorted(entries)
        assert all(layers for _, layers in tasks)
        if per_task:
            assert max(len(layers) for _, layers in tasks) <= per_task
    assert len(plan_tasks(entries, 1)) == 3 and len(plan_tasks(entries, 12)) == 12
