"""Feasibility against an independent oracle, over every layout of small spaces.

The oracle shares nothing with :mod:`hylo_search.space` but the teacher's config: the layouts are enumerated with
``itertools.product`` over per-layer tokens written out by hand, count rules are Python predicates over mixer counts
taken from the token strings (written beside each space's YAML text, not parsed from it), cache bytes come from
:func:`hylo_model.cache_bytes` on a config built for the whole layout, and parameters from a model built for the
whole layout on the meta device. Compared with it: the per-layout verdict (:meth:`is_feasible`, the scalar
constraints), the exact feasible fraction (the vectorised :meth:`constraint_matrix`), and whether loading the space
refuses it as unsatisfiable (:meth:`check_satisfiable`). Several spaces put the only feasible layouts exactly on a
count rule's bound, where an off-by-one in any of the three shows.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from hylo_model import HyLoForCausalLM, cache_bytes
from hylo_search.errors import UsageError
from hylo_search.study import load_study

from .helpers import write_study

LAYERS, LENGTH = 4, 512  # builtin:tiny-random has 4 layers; the test studies' budgets are at 512 tokens
MIXER_OF = {"A": "attention", "L": "mla", "M": "mamba2", "G": "gdn"}  # the first letter of a layout token


def counts_of(tokens):
    """``{mixer: layers}`` from the token strings alone."""
    found = Counter(MIXER_OF[t[0]] for t in tokens)
    return {m: found[m] for m in MIXER_OF.values()}


# name -> (the space's YAML fields, the tokens each layer may take, the count rules as predicates, the budgets as
# (metric, limit as a fraction of the teacher's)).
SPACES = {
    "between": (
        {"mixers": ["attention", "mla", "gdn"], "mla_ranks": [8], "counts": ["attention+mla between 1 and 3"],
         "budgets": ["cache_bytes@512 <= 60%"]},
        [["A", "L8", "G"]] * 4,
        [lambda c: 1 <= c["attention"] + c["mla"] <= 3],
        [("cache_bytes", 0.60)],
    ),
    "exactly-at-the-max": (
        # Layer 0 is fixed to GDN: only layouts whose three free layers are all attention/MLA are feasible, i.e.
        # the count sits exactly on the rule's upper bound.
        {"mixers": ["attention", "mla", "gdn"], "mla_ranks": [8, 16], "fixed": {0: "G"},
         "counts": ["attention+mla between 3 and 3"]},
        [["G"]] + [["A", "L8", "L16", "G"]] * 3,
        [lambda c: c["attention"] + c["mla"] == 3],
        [],
    ),
    "equal-and-at-most": (
        {"mixers": ["attention", "mamba2", "gdn"], "counts": ["attention == 2", "mamba2 <= 1"],
         "budgets": ["params <= 1.09x"]},
        [["A", "M", "G"]] * 4,
        [lambda c: c["attention"] == 2, lambda c: c["mamba2"] <= 1],
        [("params", 1.09)],  # A,A,M,G is 1.0888x the teacher; A,A,G,G 1.1156x
    ),
    "overrides-and-at-least": (
        {"mixers": "all", "mla_ranks": [8, 16], "fixed": {0: "A"},
         "layers": [{"layers": "2-3", "mixers": ["mla", "gdn"], "mla_ranks": [16]}],
         "counts": ["gdn >= 2", "attention+mla between 2 and 2"],
         "budgets": ["cache_bytes@512 <= 55%", "params <= 1.2x"]},
        [["A"], ["A", "L8", "L16", "M", "G"], ["L16", "G"], ["L16", "G"]],
        [lambda c: c["gdn"] >= 2, lambda c: c["attention"] + c["mla"] == 2],
        [("cache_bytes", 0.55), ("params", 1.2)],
    ),
    "global-rank": (
        {"mixers": ["attention", "mla", "gdn"], "mla_ranks": [8, 16], "rank_scope": "global",
         "counts": ["mla between 1 and 3", "attention <= 1"], "budgets": ["cache_bytes@512 <= 40%"]},
        # One rank for every MLA layer of a layout: the product is taken per rank below.
        [["A", "L", "G"]] * 4,
        [lambda c: 1 <= c["mla"] <= 3, lambda c: c["attention"] <= 1],
        [("cache_bytes", 0.40)],
    ),
    "counts-impossible": (
        {"mixers": ["attention", "gdn"], "fixed": {0: "G", 1: "G"}, "counts": ["attention between 3 and 4"]},
        [["G"], ["G"], ["A", "G"], ["A", "G"]],
        [lambda c: 3 <= c["attention"] <= 4],
        [],
    ),
    "budget-impossible": (
        {"mixers": ["attention", "gdn"], "counts": ["attention >= 1"], "budgets": ["cache_bytes@512 <= 20%"]},
        [["A", "G"]] * 4,
        [lambda c: c["attention"] >= 1],
        [("cache_bytes", 0.20)],
    ),
}


def layouts_of(per_layer, ranks=(8, 16)):
    """Every point of a space, by itertools: the product of the per-layer tokens, and in a global-rank space (an
    ``L`` token) each rank in turn. A point is a parameter choice: with a global rank, a layout without MLA is there
    once per rank, as uniform sampling and the feasible fraction see it."""
    global_rank = any("L" in tokens for tokens in per_layer)
    return sorted(tuple(f"L{rank}" if t == "L" else t for t in combo)
                  for combo in itertools.product(*per_layer) for rank in (ranks if global_rank else ranks[:1]))


class Oracle:
    """Exact cache bytes and parameter counts of whole layouts, from configs and models built for each layout."""

    def __init__(self, base_config):
        self.base = base_config
        self.memo = {}

    def config(self, tokens):
        return self.base.with_layout(",".join(tokens), num_hidden_layers=len(tokens), mla_rope_pairs=None)

    def metric(self, metric, tokens):
        key = (metric, tuple(tokens))
        if key not in self.memo:
            config = self.config(tokens)
            if metric == "cache_bytes":
                self.memo[key] = cache_bytes(config, LENGTH, batch_size=1, dtype=torch.bfloat16)
            else:
                with torch.device("meta"):
                    model = HyLoForCausalLM(config)
                self.memo[key] = sum(p.numel() for p in model.parameters())  # shared (tied) tensors once
        return self.memo[key]

    def feasible(self, tokens, rules, budgets, which=None):
        """The layout meets every count rule and the budgets (``which``: only those budget indices)."""
        counts = counts_of(tokens)
        if not all(rule(counts) for rule in rules):
            return False
        teacher = ("A",) * len(tokens)
        return all(self.metric(m, tokens) <= limit * self.metric(m, teacher)
                   for k, (m, limit) in enumerate(budgets) if which is None or k in which)


def _load(folder, name):
    yaml_space, _, _, _ = SPACES[name]
    # The base test study's space has a budget: a space written without one must say so, or it would inherit it.
    return load_study(write_study(folder, name=name.replace("-", "_"), space={"budgets": [], **yaml_space}))


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    loaded = _load(tmp_path_factory.mktemp("oracle"), "between")
    return Oracle(loaded.student_base_config)


def test_the_oracle_counts_the_teacher_as_the_cost_model_does(oracle, tmp_path):
    """The two sides price the all-attention teacher the same (the budgets' denominator)."""
    costs = _load(tmp_path, "between").space.costs
    teacher = ["A"] * LAYERS
    assert oracle.metric("cache_bytes", teacher) == costs.layout_cache(teacher, LENGTH)
    assert oracle.metric("params", teacher) == costs.layout_params(teacher)


@pytest.mark.parametrize("name", list(SPACES))
def test_satisfiability_verdict_matches_the_oracle(oracle, tmp_path, name):
    """Loading refuses a space exactly when no layout meets the count rules, or no layout meets the count rules and
    one budget (each budget on its own, as :meth:`check_satisfiable` documents)."""
    _, per_layer, rules, budgets = SPACES[name]
    layouts = layouts_of(per_layer)
    possible = any(oracle.feasible(t, rules, budgets, which=()) for t in layouts) and all(
        any(oracle.feasible(t, rules, budgets, which={k}) for t in layouts) for k in range(len(budgets)))
    if possible:
        _load(tmp_path, name)
    else:
        with pytest.raises(UsageError, match="no layout of the space meets|impossible constraint"):
            _load(tmp_path, name)
    assert possible == (name not in ("counts-impossible", "budget-impossible"))


@pytest.mark.parametrize("name", [n for n in SPACES if not n.endswith("impossible")])
def test_every_layout_verdict_and_the_exact_fraction_match_the_oracle(oracle, tmp_path, name):
    _, per_layer, rules, budgets = SPACES[name]
    space = _load(tmp_path, name).space
    layouts = layouts_of(per_layer)
    assert sorted(tuple(t) for t in space.iter_tokens()) == layouts  # the space holds the same layouts
    want = {t: oracle.feasible(t, rules, budgets) for t in layouts}
    got = {t: space.is_feasible(list(t)) for t in layouts}
    assert got == want
    hits = sum(want[t] for t in layouts)
    assert 0 < hits < len(layouts)  # each space has feasible and infeasible layouts to tell apart
    fraction, how = space.feasible_fraction()
    assert how == f"exact, {hits}/{len(layouts)}" and fraction == hits / len(layouts)


def test_a_budget_exactly_at_the_smallest_layout_is_satisfiable_and_one_byte_less_is_not(oracle, tmp_path):
    """An absolute cache budget set to the oracle's smallest layout that meets the count rule: loading accepts it,
    exactly those layouts are feasible; one byte lower, loading refuses it."""
    per_layer, rule = [["A", "L8", "G"]] * 4, (lambda c: c["attention"] + c["mla"] >= 2)
    layouts = layouts_of(per_layer)
    smallest = min(oracle.metric("cache_bytes", t) for t in layouts if rule(counts_of(t)))
    space_yaml = {"mixers": ["attention", "mla", "gdn"], "mla_ranks": [8], "counts": ["attention+mla >= 2"]}
    loaded = load_study(write_study(tmp_path, name="edge", space={
        **space_yaml, "budgets": [f"cache_bytes@512 <= {smallest}"]}))
    feasible = {t for t in layouts if loaded.space.is_feasible(list(t))}
    assert feasible == {t for t in layouts if rule(counts_of(t)) and oracle.metric("cache_bytes", t) == smallest}
    assert loaded.space.feasible_fraction()[0] == len(feasible) / len(layouts) > 0
    with pytest.raises(UsageError, match="impossible constraint"):
        load_study(write_study(tmp_path, name="edge", space={
            **space_yaml, "budgets": [f"cache_bytes@512 <= {smallest - 1}"]}))
