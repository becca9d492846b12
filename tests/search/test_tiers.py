"""Two-tier studies (assembled scores first, the best layouts trained by the proxy), the exact solver's pool
enqueued into the study, and the fidelity audit through the CLI."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from hylo_search.library.solver import block_scores, solve_pool
from hylo_search.results.front import audit_warnings_of
from hylo_search.search.run import POOL_ATTR, options_for, run_study
from hylo_search.search.storage import open_study_folder
from hylo_search.search.trials import pareto_front, trial_counts
from hylo_search.study import load_study

from .helpers import brute_force_front, brute_force_ranking, hylo, write_study

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)

TWO_TIERS = dict(name="tiers", trials=8, proxy={"kind": "recipe", "recipe": "proxy_tiny", "tokens": 768},
                 library={"recipe": "proxy_tiny", "tokens": 512, "pool": 2, "pool_distance": 2},
                 tiers={"promote": 3})


@pytest.fixture(scope="module")
def tiered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiers")
    path = write_study(folder, **TWO_TIERS)
    loaded = load_study(path)
    summary = run_study(loaded, options_for(loaded, out=str(folder / "run")))
    return loaded, summary, open_study_folder(str(folder / "run")).study, folder


def test_every_trial_records_its_tier_and_the_best_are_promoted(tiered):
    loaded, summary, study, _ = tiered
    first = [t for t in study.trials if "promoted_from" not in t.user_attrs]
    second = [t for t in study.trials if "promoted_from" in t.user_attrs]
    assert {t.user_attrs["tier"] for t in first} == {"assembled"}
    assert {t.user_attrs["tier"] for t in second} == {"recipe"} and len(second) == 3
    counts = trial_counts(study)
    assert counts["counted"] - counts["promoted"] == 8 and counts["promoted"] == 3
    assert summary.stop_reason == "reached 8 trials; 3 promoted to recipe"
    done = [t for t in first if t.state == TrialState.COMPLETE and all(v <= 0 for v in t.constraints.values())]
    unique = {}
    for t in done:
        unique.setdefault(t.user_attrs["layout"], t)
    best = brute_force_ranking(list(unique.values()), loaded.directions)[:3]
    assert [t.user_attrs["promoted_from"] for t in second] == [t.number for t in best]
    for t in second:
        parent = study.trials[t.user_attrs["promoted_from"]]
        assert t.params == parent.params and t.constraints == parent.constraints
        assert t.user_attrs["layout"] == parent.user_attrs["layout"]
        assert [s["kind"] for s in t.user_attrs["result"]["details"]["stages"]] == ["align", "distill"]
        assert t.values[1] == parent.values[1]  # cache bytes: exact, the same in both tiers
        assert parent.user_attrs["result"]["cache"]["library_blocks"] == sum(x != "A" for x in
                                                                             parent.user_attrs["layout"].split(","))


def test_the_front_is_taken_over_the_second_tier(tiered):
    loaded, summary, study, _ = tiered
    second = [t for t in study.trials if "promoted_from" in t.user_attrs]
    want = brute_force_front(second, loaded.directions)
    assert [t.number for t in pareto_front(study)] == want == summary.front


def test_the_table_has_tier_columns(tiered):
    _, _, study, folder = tiered
    table = pd.read_parquet(folder / "run" / "trials.parquet")
    assert {"tier", "promoted_from", "source"} <= set(table.columns)
    assert set(table.loc[table["promoted_from"].notna(), "tier"]) == {"recipe"}
    assert set(table.loc[table["promoted_from"].isna(), "tier"]) == {"assembled"}


def test_the_solver_pool_is_enqueued_once(tiered):
    loaded, _, study, folder = tiered
    assert study.user_attrs[POOL_ATTR] == 2
    pooled = [t for t in study.trials if t.user_attrs.get("source") == "solver"]
    table = json.loads((folder / "run" / "library.json").read_text())
    want = solve_pool(loaded.space, block_scores(table["rows"]), 2, min_distance=2)
    assert [t.user_attrs["layout"] for t in pooled] == [",".join(p.tokens) for p in want]
    assert [t.user_attrs["solver_score"] for t in pooled] == pytest.approx([p.score for p in want])
    assert all(t.state == TrialState.COMPLETE for t in pooled)


def test_a_rerun_adds_nothing(tiered):
    loaded, _, study, folder = tiered
    before = len(study.trials)
    summary = run_study(loaded, options_for(loaded, out=str(folder / "run")))
    assert summary.stop_reason == "reached 8 trials; 3 promoted to recipe"
    assert len(open_study_folder(str(folder / "run")).study.trials) == before


def test_the_audit_reports_rank_correlations_on_eight_layouts(tiered):
    _, _, _, folder = tiered
    runs = folder / "runs"
    out = hylo(["audit", "tiers.yaml", "--layouts", "8", "--recipe", "proxy_tiny", "--budget-multiplier", "2",
                "--out", str(folder / "run")], folder, runs, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    print(out.stdout)
    audit = json.loads((folder / "run" / "audit.json").read_text())
    assert len(audit["layouts"]) == 8
    from hylo_model.train import load_recipe

    assert audit["promoted_with"] == {"kind": "recipe", "recipe": "proxy_tiny",
                                      "tokens": 2 * load_recipe("proxy_tiny").total_tokens(), "options": {"data": None}}
    assert audit["audit_seed"] == 0 + 7919  # a seed the search never used
    assert "A,A,A,A" not in [row["layout"] for row in audit["layouts"]]  # the teacher is no evidence
    objectives = {row["objective"]: row for row in audit["correlations"]}
    assert set(objectives) == {"assembled:proxy_kl", "recipe:proxy_kl", "additive:proxy_kl"}
    for name, row in objectives.items():
        assert row["n"] == 8 and name in out.stdout
        if row["undefined"] is None:
            low, high = row["spearman_ci"]
            assert low <= row["spearman"] <= high and f"{row['spearman']:.2f} [{low:.2f}, {high:.2f}]" in out.stdout
            # Regret against an independent reading of the rows: the best promoted value overall minus the best
            # promoted value among the cheap score's top k.
            sign = -1.0  # proxy_kl is minimized
            pairs = [((r["cheap"].get(row["tier"]) or {}).get("proxy_kl"), (r["promoted"] or {}).get("proxy_kl"))
                     for r in audit["layouts"]]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            by_cheap = sorted(pairs, key=lambda p: p[0])
            best = max(sign * b for _, b in pairs)
            for k in (1, 3):
                assert row["regret"][str(k)] == pytest.approx(best - max(sign * b for _, b in by_cheap[:k]))
    assert all(row["promoted"] for row in audit["layouts"])
    warned = [row["objective"] for row in audit["correlations"]
              if row["undefined"] or row["spearman_ci"][0] < 0.5]
    pareto = hylo(["pareto", str(folder / "run")], folder, runs)
    assert pareto.returncode == 0, pareto.stderr
    for objective in warned:
        assert f"warning: objective {objective}: Spearman with the promoted runs" in pareto.stdout
    assert ("warning:" in pareto.stdout) == bool(warned)


def test_audit_warnings_flag_low_bounds_and_undefined_correlations():
    audit = {"threshold": 0.5, "correlations": [
        {"objective": "assembled:proxy_kl", "n": 8, "spearman": 0.9, "spearman_ci": [0.6, 1.0]},
        {"objective": "recipe:proxy_kl", "n": 8, "spearman": 0.8, "spearman_ci": [0.3, 0.95]},
        {"objective": "additive:probe_accuracy@512", "n": 8, "spearman": None, "spearman_ci": None}]}
    lines = audit_warnings_of(audit)
    assert len(lines) == 2
    assert lines[0] == ("objective recipe:proxy_kl: Spearman with the promoted runs 0.80, 95% CI 0.30..0.95 on 8 "
                        "layouts (lower bound below 0.5): do not trust its ranking alone")
    assert "undefined (ties)" in lines[1]


def test_correlations_from_ties_are_undefined_not_one():
    from hylo_search.results.audit import correlations, top_k_regret

    tied = correlations([0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0])
    assert tied["spearman"] is None and "ties: 2 distinct" in tied["undefined"]
    exact = correlations([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0])
    assert exact["spearman"] == pytest.approx(1.0, abs=1e-12) and exact["kendall"] == pytest.approx(1.0, abs=1e-12)
    assert exact["spearman_ci"] == pytest.approx([1.0, 1.0], abs=1e-12)
    # The cheap score's pick is the second best promoted layout: regret@1 is the gap, regret@3 is 0.
    assert top_k_regret([1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 3.0, 5.0], "minimize") == {"1": 1.0, "3": 0.0}
    assert top_k_regret([1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 3.0, 5.0], "maximize") == {"1": 0.0, "3": 0.0}


def test_audit_bad_input_exits_2(tmp_path):
    write_study(tmp_path, name="plain")
    for args, message in [(["--layouts", "2"], "--layouts must be >= 3"),
                          (["--recipe", "proxy_tiny", "--budget-multiplier", "0"], "--budget-multiplier must be > 0"),
                          ([], "the audit trains layouts as promotion does")]:
        out = hylo(["audit", "plain.yaml", *args], tmp_path, tmp_path / "runs")
        assert out.returncode == 2 and message in out.stderr, out.stderr
