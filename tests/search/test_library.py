"""The block library on the tiny teacher (CPU): built once and reused, blocks independent of how layers were
grouped, the sensitivity table, assembled scoring without training, and the CLI (library, sensitivity)."""

from __future__ import annotations

import importlib.util
import json
import platform
import time

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

from hylo_search.define.schema import ProxyConfig
from hylo_search.errors import UsageError
from hylo_search.executors.local import LocalExecutor
from hylo_search.library.build import build_library
from hylo_search.library.solver import library_entries
from hylo_search.scoring import TrialContext
from hylo_search.study import load_study
from hylo_search.worker.runtime import StudyRuntime

from .helpers import hylo, write_study

LIBRARY = {"recipe": "proxy_tiny", "tokens": 512}


class StepCounter:
    """Counts optimizer steps taken anywhere in this process while active."""

    def __enter__(self):
        self.steps = 0
        self._handle = register_optimizer_step_post_hook(lambda *args: setattr(self, "steps", self.steps + 1))
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def _build(loaded, folder):
    with StepCounter() as counter:
        summary = build_library(loaded, folder, LocalExecutor())
    return summary, counter.steps


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("library")
    loaded = load_study(write_study(folder, name="lib", library=LIBRARY, proxy={"kind": "assembled"}))
    first, steps = _build(loaded, folder / "run")
    return loaded, folder, first, steps


def test_the_library_is_built_once_and_reused(built):
    loaded, folder, first, steps = built
    entries = library_entries(loaded.space)
    assert len(entries) == 8 and first.entries == 8  # 4 layers x (L8, G)
    assert first.trained == 8 and first.reused == 0 and not first.failures
    assert steps == first.optimizer_steps > 0
    blocks = sorted((folder / "run" / "cache" / "library" / "blocks").rglob("*.safetensors"))
    assert len(blocks) == 8
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "run" / "cache" / "library").rglob("*") if p.is_file()}
    table = json.loads((folder / "run" / "library.json").read_text())
    again, steps_again = _build(loaded, folder / "run")
    assert steps_again == 0 and again.optimizer_steps == 0  # no training at all
    assert again.trained == 0 and again.reused == 8
    assert stamps == {p: p.stat().st_mtime_ns for p in (folder / "run" / "cache" / "library").rglob("*")
                      if p.is_file()}  # nothing rewritten
    rows_again = json.loads((folder / "run" / "library.json").read_text())["rows"]
    assert [{k: v for k, v in r.items() if k != "trained"} for r in rows_again] == \
        [{k: v for k, v in r.items() if k != "trained"} for r in table["rows"]]
    assert {r["node"] for r in rows_again} == {f"local:{platform.node()}"}
    print(f"library: first build {first.seconds:.2f} s ({first.optimizer_steps} optimizer steps), "
          f"rerun {again.seconds:.2f} s (0 steps)")


def test_a_block_does_not_depend_on_the_layers_trained_with_it(built, tmp_path):
    """Gradient clipping is off in the library's align stage: one layer per task gives the same blocks."""
    loaded, folder, _, _ = built
    alone = load_study(write_study(tmp_path, name="lib", library={**LIBRARY, "layers_per_task": 1},
                                   proxy={"kind": "assembled"}))
    summary, _ = _build(alone, tmp_path / "run")
    assert summary.trained == 8
    joint = {r["key"]: r for r in json.loads((folder / "run" / "library.json").read_text())["rows"]}
    for row in json.loads((tmp_path / "run" / "library.json").read_text())["rows"]:
        a = load_file(str(next((folder / "run" / "cache").rglob(f"{joint[row['key']]['key']}.safetensors"))))
        b = load_file(str(next((tmp_path / "run" / "cache").rglob(f"{row['key']}.safetensors"))))
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


def test_the_sensitivity_table_scores_each_block_alone(built):
    loaded, folder, _, _ = built
    table = json.loads((folder / "run" / "library.json").read_text())
    assert table["complete"] and table["fingerprint"] == loaded.fingerprint()
    rows = table["rows"]
    assert {(r["layer"], r["token"]) for r in rows} == set(library_entries(loaded.space))
    runtime = StudyRuntime.get(loaded.resolved(), str((folder / "run").resolve()))
    teacher_kl, _ = runtime.heldout_scores(runtime.library.assemble(["A"] * 4)[0])
    assert teacher_kl == pytest.approx(0.0, abs=1e-6)
    for row in rows:
        assert row["kl"] > 0 and row["probe_length"] == loaded.definition.target_length
        assert row["teacher_probe"] == 1.0 and row["probe_drop"] == pytest.approx(1.0 - row["probe"])
        assert row["train_steps"] > 0 and row["train_tokens"] > 0
        if row["token"] == "G":  # far from the teacher at init (MLA's SVD init may already be at its floor)
            assert row["align_after"] < row["align_before"]
    tokens = ["A"] * 4
    tokens[rows[3]["layer"]] = rows[3]["token"]
    kl, _ = runtime.heldout_scores(runtime.library.assemble(tokens)[0])
    assert kl == pytest.approx(rows[3]["kl"])


def test_assembled_scoring_trains_nothing_and_uses_the_library_blocks(built):
    loaded, folder, _, _ = built
    runtime = StudyRuntime.get(loaded.resolved(), str((folder / "run").resolve()))
    layout = ["A", "G", "L8", "G"]
    assembled = runtime.proxy_for({"kind": "assembled"})
    trained = runtime.proxy_for(ProxyConfig(kind="recipe", recipe="proxy_tiny").model_dump())
    timings = {}
    for name, proxy in (("assembled", assembled), ("recipe", trained)):
        for _ in range(2):  # the second call is timed: both warm (data drawn, teacher log-probs cached)
            ctx = TrialContext(runtime, layout, 0, 0)
            with StepCounter() as counter:
                began = time.perf_counter()
                result = proxy(ctx)
                runtime.probes(ctx, result.model)
                timings[name] = (time.perf_counter() - began, counter.steps)
    assert timings["assembled"][1] == 0 and timings["recipe"][1] > 0
    model = assembled(TrialContext(runtime, layout, 0, 0)).model
    for i, token in enumerate(layout):
        if token != "A":
            block = load_file(str(runtime.library.block_path(i, token)))
            for name, value in model.model.layers[i].mixer.state_dict().items():
                torch.testing.assert_close(value, block[name])
    ratio = timings["recipe"][0] / timings["assembled"][0]
    print(f"assembled scoring {timings['assembled'][0] * 1e3:.0f} ms (0 optimizer steps) vs proxy training "
          f"{timings['recipe'][0] * 1e3:.0f} ms ({timings['recipe'][1]} steps): {ratio:.1f}x faster")


def test_assembly_without_a_block_names_the_command(tmp_path):
    loaded = load_study(write_study(tmp_path, name="empty", library=LIBRARY, proxy={"kind": "assembled"}))
    runtime = StudyRuntime(loaded.resolved(), tmp_path / "run")
    with pytest.raises(RuntimeError, match=r"no block for layer 1 \(G\).*hylo-search library empty"):
        runtime.library.assemble(["A", "G", "A", "A"])


@pytest.mark.parametrize("overrides, message", [
    ({"proxy": {"kind": "assembled"}}, "field 'library.recipe': the block library trains each block"),
    ({"proxy": {"kind": "assembled"}, "library": {"recipe": "proxy_tiny", "pool": -1}},
     "field 'library.pool'"),
    ({"proxy": {"kind": "upcycle_kl"}, "tiers": {"first": {"kind": "upcycle_kl"}, "promote": 2}},
     "field 'tiers.first.kind': the first tier must differ"),
    ({"proxy": {"kind": "upcycle_kl"}, "tiers": {"promote": 0}, "library": LIBRARY}, "field 'tiers.promote'"),
    ({"proxy": {"kind": "assembled"}, "library": {"recipe": "proxy_tiny", "pool_cache_ratios": [0]}},
     "field 'library.pool_cache_ratios'"),
])
def test_bad_library_and_tier_settings_name_the_field(tmp_path, overrides, message):
    with pytest.raises(UsageError, match=message):
        load_study(write_study(tmp_path, **overrides))


def test_a_recipe_without_an_align_stage_is_refused(tmp_path):
    recipe = tmp_path / "distill_only.yaml"
    recipe.write_text("stages:\n  - {kind: distill, steps: 2, seq_len: 16, batch_size: 2, lr: 1.0e-3}\n")
    loaded = load_study(write_study(tmp_path, library={"recipe": str(recipe)}, proxy={"kind": "assembled"}))
    with pytest.raises(UsageError, match="has no align stage \\(stages: distill\\)"):
        build_library(loaded, tmp_path / "run", LocalExecutor())


def test_library_and_sensitivity_commands(tmp_path):
    write_study(tmp_path, name="cli", library=LIBRARY, proxy={"kind": "assembled"})
    runs = tmp_path / "runs"
    built = hylo(["library", "cli.yaml"], tmp_path, runs)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "8 blocks: 8 trained, 0 reused" in built.stdout
    again = hylo(["library", "cli.yaml"], tmp_path, runs)
    assert "8 blocks: 0 trained, 8 reused, 0 optimizer steps" in again.stdout, again.stdout + again.stderr
    shown = hylo(["sensitivity", "cli"], tmp_path, runs)
    assert shown.returncode == 0, shown.stderr
    assert "held-out KL of the teacher with this block" in shown.stdout and "probe drop" in shown.stdout
    assert "┃ layer ┃" in shown.stdout and " G " in shown.stdout and " L8 " in shown.stdout
    csv = hylo(["sensitivity", "cli.yaml", "--format", "csv"], tmp_path, runs)
    assert csv.stdout.splitlines()[0].startswith("layer,token,mixer,rank,kl") and len(csv.stdout.splitlines()) == 9
    plot = hylo(["sensitivity", "cli", "--plot", str(tmp_path / "heat.png")], tmp_path, runs)
    if importlib.util.find_spec("matplotlib") is None:  # optional: the dashboard extra
        assert plot.returncode == 1 and "needs matplotlib" in plot.stderr
    else:
        assert plot.returncode == 0 and (tmp_path / "heat.png").stat().st_size > 0
    write_study(tmp_path, name="nolib")
    missing = hylo(["sensitivity", "nolib.yaml"], tmp_path, runs)
    assert missing.returncode == 2 and "hylo-search library STUDY" in missing.stderr
    bad = hylo(["sensitivity", "cli", "--metric", "nope"], tmp_path, runs)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
