"""KL-guided layer scores in the block library (one layer restored to attention or MLA in the all-linear student
assembled from aligned blocks) and the baselines placed by measured scores: the scores equal an independent
computation, are cached, order the layers as the drops say, and their baselines are enqueued once."""

from __future__ import annotations

import json

import optuna
import pytest

from hylo_search.executors.local import LocalExecutor
from hylo_search.library.build import build_library
from hylo_search.library.sensitivity import format_table, heat_map
from hylo_search.results.dry_run import dry_run_report
from hylo_search.search.run import MEASURED_BASELINES_ATTR, options_for, run_study
from hylo_search.search.storage import open_study_folder
from hylo_search.space.baselines import measured_baselines, restore_plan
from hylo_search.study import load_study
from hylo_search.worker.runtime import StudyRuntime

from .helpers import write_study

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)

LIBRARY = {"recipe": "proxy_tiny", "tokens": 512}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kl_guided")
    loaded = load_study(write_study(folder, name="kg", library=LIBRARY, proxy={"kind": "assembled"}, trials=6))
    summary = build_library(loaded, folder / "run", LocalExecutor())
    return loaded, folder, summary


def _runtime(loaded, folder):
    return StudyRuntime.get(loaded.resolved(), str((folder / "run").resolve()))


def test_restore_scores_equal_an_independent_computation(built):
    loaded, folder, summary = built
    table = json.loads((folder / "run" / "library.json").read_text())
    assert table["complete"] and not summary.failures
    restore = table["restore"]
    # 4 layers x (attention, MLA rank 8) restored in the all-GDN student: 8 restored layouts + the base, scored once
    assert {(r["layer"], r["keep"]) for r in restore} == {(i, k) for i in range(4) for k in ("A", "L8")}
    assert {r["linear"] for r in restore} == {"G"}
    assert summary.restore_rows == 8 and summary.restore_scored == 9
    runtime = _runtime(loaded, folder)
    kl_all, ce_all = runtime.heldout_scores(runtime.library.assemble(["G"] * 4)[0])
    for row in restore:
        tokens = ["G"] * 4
        tokens[row["layer"]] = row["keep"]
        kl, ce = runtime.heldout_scores(runtime.library.assemble(tokens)[0])
        assert row["kl_all"] == pytest.approx(kl_all, rel=1e-6) and row["ce_all"] == pytest.approx(ce_all, rel=1e-6)
        assert row["kl_restored"] == pytest.approx(kl, rel=1e-6) and row["ce_restored"] == pytest.approx(ce, rel=1e-6)
        assert row["kl_drop"] == row["kl_all"] - row["kl_restored"]
    assert kl_all > 0
    print("restore drops (A in G): " + ", ".join(f"layer {r['layer']} {r['kl_drop']:.4g}" for r in restore
                                                  if r["keep"] == "A") + f"; kl_all {kl_all:.4g}")


def test_rerunning_the_library_reuses_the_cached_scores(built):
    loaded, folder, _ = built
    cached = sorted((folder / "run" / "cache" / "library" / "restore").rglob("*.json"))
    assert len(cached) == 9
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    before = json.loads((folder / "run" / "library.json").read_text())["restore"]
    again = build_library(loaded, folder / "run", LocalExecutor())
    assert again.restore_scored == 0 and again.trained == 0 and again.restore_rows == 8
    assert stamps == {p: p.stat().st_mtime_ns for p in cached}  # none rewritten
    assert sorted((folder / "run" / "cache" / "library" / "restore").rglob("*.json")) == cached
    assert json.loads((folder / "run" / "library.json").read_text())["restore"] == before


def test_a_score_is_keyed_by_its_blocks_and_the_heldout_data(built, tmp_path):
    loaded, folder, _ = built
    library = _runtime(loaded, folder).library
    layout = ["G", "A", "G", "G"]
    assert library.layout_score_path(layout) != library.layout_score_path(["G", "G", "A", "G"])
    other = load_study(write_study(tmp_path, name="kg", library=LIBRARY, proxy={"kind": "assembled"},
                                   data={"heldout_sequences": 3}))
    moved = StudyRuntime(other.resolved(), folder / "run").library
    assert moved.key(0, "G") != library.key(0, "G")  # data is in every block key, so in every layout key
    assert moved.layout_score_path(layout) != library.layout_score_path(layout)


def test_the_sensitivity_table_shows_the_restore_drop(built):
    _, folder, _ = built
    table = json.loads((folder / "run" / "library.json").read_text())
    layers, columns, values = heat_map(table, "kl_drop")
    assert layers == [0, 1, 2, 3] and columns == ["A in G", "L8 in G"]
    drop = {(r["layer"], r["keep"]): r["kl_drop"] for r in table["restore"]}
    assert values == [[drop[(i, "A")], drop[(i, "L8")]] for i in layers]
    text = format_table(table, ["kl", "kl_drop"])
    assert "KL drop restoring this layer" in text and "A in G" in text and "darker = more worth keeping" in text


def _library_table(space, drops, swapped):
    """A library table with the given restore drops ({(linear, keep): [per layer]}) and swapped-in KL."""
    restore = [{"layer": i, "linear": lin, "keep": keep, "kl_all": 1.0, "kl_restored": 1.0 - d, "kl_drop": d}
               for (lin, keep), values in drops.items() for i, d in enumerate(values) if d is not None]
    rows = [{"layer": i, "token": token, "kl": v} for token, values in swapped.items()
            for i, v in enumerate(values) if v is not None]
    return {"rows": rows, "restore": restore}


def test_the_drop_ordering_picks_the_expected_layers(tmp_path):
    """Qwen3-1.7B's 28 layers (config only), attention or GDN: the count rule allows 3 attention layers and the
    cache budget 2, so the baselines keep the two layers with the largest scores."""
    loaded = load_study(write_study(
        tmp_path, name="eight", teacher="Qwen/Qwen3-1.7B", target_length=65536, upcycle={"qk_rope_head_dim": 64},
        space={"mixers": ["attention", "gdn"], "mla_ranks": [], "counts": ["attention between 1 and 3"],
               "budgets": ["cache_bytes@64k <= 8%"], "fixed": {}}))
    space = loaded.space
    n = space.num_layers
    assert [(p.linear, p.keep, p.layers) for p in restore_plan(space)] == [("G", "A", tuple(range(n)))]
    drops = [0.0] * n
    drops[5], drops[17], drops[9], drops[2] = 0.5, 0.4, 0.3, 0.3  # 9 and 2 tie: the lower layer wins
    swapped = [0.0] * n
    swapped[0], swapped[27], swapped[13] = 0.9, 0.8, 0.7
    found = {b.name: b for b in measured_baselines(space, _library_table(space, {("G", "A"): drops},
                                                                            {"G": swapped}))}
    assert set(found) == {"kl_guided_gdn", "smart_sensitivity_gdn"}
    kept = {name: [i for i, t in enumerate(b.tokens) if t == "A"] for name, b in found.items()}
    # Three attention layers cost more than 8 % of the teacher's cache at 64K; two fit.
    three = ["G"] * n
    for i in (2, 5, 17):
        three[i] = "A"
    assert not space.is_feasible(three)
    assert kept == {"kl_guided_gdn": [5, 17], "smart_sensitivity_gdn": [0, 27]}
    for baseline in found.values():
        assert space.is_feasible(list(baseline.tokens))
        assert "adapted to the constraints: 2 kept layers, the count rules allow 3" in baseline.note
    # With the budget lifted, the count rule's 3 (ties to the lower layer).
    free = load_study(write_study(
        tmp_path, name="free", teacher="Qwen/Qwen3-1.7B", target_length=65536, upcycle={"qk_rope_head_dim": 64},
        space={"mixers": ["attention", "gdn"], "mla_ranks": [], "counts": ["attention between 1 and 3"],
               "budgets": [], "fixed": {}})).space
    guided = measured_baselines(free, _library_table(free, {("G", "A"): drops}, {}))[0]
    assert [i for i, t in enumerate(guided.tokens) if t == "A"] == [2, 5, 17] and "adapted" not in guided.note


def test_measured_baselines_are_enqueued_once_and_feasible_or_explained(built):
    loaded, folder, _ = built
    options = options_for(loaded, out=str(folder / "run"))
    found = measured_baselines(loaded.space, json.loads((folder / "run" / "library.json").read_text()))
    assert {b.name for b in found} == {"kl_guided_gdn", "kl_guided_mla_gdn", "smart_sensitivity_gdn"}
    for baseline in found:
        assert loaded.space.is_feasible(list(baseline.tokens)) or "infeasible" in baseline.note
    report = dry_run_report(loaded, options)
    assert all(b.name in report for b in found)
    run_study(loaded, options)
    study = open_study_folder(str(folder / "run")).study
    assert study.user_attrs[MEASURED_BASELINES_ATTR] is True
    layouts = [t.user_attrs.get("layout") for t in study.trials if t.user_attrs.get("baseline")]
    for baseline in found:  # enqueued, or already there as an earlier baseline's layout
        assert layouts.count(",".join(baseline.tokens)) == 1
    named = [t.user_attrs["baseline"] for t in study.trials if t.user_attrs.get("baseline")]
    run_study(loaded, options_for(loaded, trials=7, out=str(folder / "run")))
    again = open_study_folder(str(folder / "run")).study
    assert [t.user_attrs["baseline"] for t in again.trials if t.user_attrs.get("baseline")] == named


def test_the_dry_run_says_measured_baselines_come_after_the_library(tmp_path):
    loaded = load_study(write_study(tmp_path, name="kg", library=LIBRARY, proxy={"kind": "assembled"}))
    report = dry_run_report(loaded, options_for(loaded, out=str(tmp_path / "run")))
    assert "(kl_guided_*, smart_sensitivity_*): enqueued after the block library is built" in report
