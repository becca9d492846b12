"""Bad input never gets a traceback and never touches the user's files.

Every case runs `hylo-search` (``hylo_search.cli.main`` in-process; a few through a subprocess) on one bad
argument, study / space / recipe / layout file, teacher folder or data file, and must get exit code 2 and one line
on stderr that names the file, field or value (and what is allowed), print no traceback, and leave every folder it
could reach (the shared fixtures, the case's own folder, the output root) exactly as it was: same names, same
contents. ``Layout.parse`` cases (from the Python API) are in ``tests/model/test_layout_bad_input.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hylo_search.cli import main
from hylo_search.define.teachers import teacher_directory

from .bad_input_world import (
    World,
    argv_of,
    build_world,
    expect_one_line,
    release_world,
    snapshot,
    write_study_file,
)
from .helpers import hylo


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    world = build_world(tmp_path_factory.mktemp("bad_input"))
    yield world
    release_world(world)


@pytest.fixture
def case_env(world, tmp_path, monkeypatch):
    """The case's own folder as the working directory and the output root inside it (must stay absent)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYLO_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path


# Study, space and data files: (id, overrides merged into the test study, fields dropped, expected text).
# `{root}` in an override is the shared fixtures' folder; the expected text always includes the file's name.
STUDY_CASES = [
    ("target_length_negative", {"target_length": -5}, (), ["field 'target_length'", "greater than or equal to 1"]),
    ("target_length_zero", {"target_length": 0}, (), ["field 'target_length'", "greater than or equal to 1"]),
    ("target_length_text", {"target_length": "long"}, (), ["field 'target_length'", "valid integer"]),
    ("target_length_missing", {}, ("target_length",), ["field 'target_length'", "required field is missing"]),
    ("probe_length_beyond_teacher", {"probes": {"lengths": [48, 999999]}}, (),
     ["field 'probes.lengths.1'", "999999 tokens is beyond the teacher's 1024 positions", "up to 1024"]),
    ("probe_length_one", {"probes": {"lengths": [1]}}, (), ["field 'probes.lengths.0'", "greater than or equal to 2"]),
    ("probe_samples_zero", {"probes": {"samples": 0}}, (), ["field 'probes.samples'", "greater than or equal to 1"]),
    ("probe_kind_unknown", {"probes": {"kind": "nonsense"}}, (), ["'probes.kind'", "nonsense"]),
    ("heldout_beyond_teacher", {"data": {"heldout_length": 5000}}, (),
     ["field 'data.heldout_length'", "5000 tokens is beyond the teacher's 1024 positions"]),
    ("heldout_sequences_zero", {"data": {"heldout_sequences": 0}}, (),
     ["field 'data.heldout_sequences'", "greater than or equal to 1"]),
    ("heldout_length_one", {"data": {"heldout_length": 1}}, (),
     ["field 'data.heldout_length'", "greater than or equal to 2"]),
    ("data_builtin_unknown", {"data": {"source": "builtin:nope"}}, (),
     ["field 'data.source'", "unknown built-in data 'builtin:nope'", "allowed: builtin:random"]),
    ("data_missing_file", {"data": {"source": "{root}/missing.txt"}}, (),
     ["field 'data.source'", "missing.txt: no such file or folder", "allowed: builtin:random"]),
    ("data_empty_file", {"data": {"source": "{root}/empty.txt"}}, (), ["field 'data.source'", "empty.txt: empty"]),
    ("data_blank_file", {"data": {"source": "{root}/blank.txt"}}, (), ["field 'data.source'", "blank.txt: empty"]),
    ("data_folder_without_text", {"data": {"source": "{root}/nodata"}}, (),
     ["field 'data.source'", "nodata: a folder without .txt or .jsonl files"]),
    ("data_jsonl_without_text", {"data": {"source": "{root}/notext.jsonl"}}, (),
     ["field 'data.source'", "notext.jsonl: the first record is not a JSON object with a 'text' string"]),
    ("teacher_missing_folder", {"teacher": "{root}/no_such_teacher"}, (),
     ["field 'teacher'", "no such directory, not a hub id"]),
    ("teacher_without_config", {"teacher": "{root}/t_noconfig"}, (), ["field 'teacher'", "config.json"]),
    ("teacher_without_weights", {"teacher": "{root}/t_noweights"}, (),
     ["field 'teacher'", "t_noweights: no model.safetensors"]),
    ("teacher_truncated_weights", {"teacher": "{root}/t_truncated"}, (),
     ["field 'teacher'", "t_truncated/model.safetensors: not a readable safetensors file"]),
    ("teacher_garbage_weights", {"teacher": "{root}/t_garbage"}, (),
     ["field 'teacher'", "t_garbage/model.safetensors: not a readable safetensors file"]),
    ("teacher_builtin_unknown", {"teacher": "builtin:nope"}, (),
     ["field 'teacher'", "unknown built-in teacher 'builtin:nope'; allowed: builtin:tiny"]),
    ("teacher_missing", {}, ("teacher",), ["field 'teacher'", "required field is missing"]),
    ("name_invalid", {"name": "bad name!"}, (), ["field 'name'", "allowed: letters, digits"]),
    ("unknown_top_field", {"trails": 5}, (), ["unknown field 'trails'", "allowed: name"]),
    ("unknown_nested_field", {"proxy": {"recipes": "tiny"}}, (), ["field 'proxy'", "unknown field 'recipes'"]),
    ("objectives_empty", {"objectives": []}, (), ["objectives: give at least one"]),
    ("objectives_twice", {"objectives": [{"metric": "proxy_kl", "direction": "minimize"}] * 2}, (),
     ["metric listed twice"]),
    ("objective_unknown_metric", {"objectives": [{"metric": "accuracy", "direction": "maximize"}]}, (),
     ["field 'objectives.0.metric'", "unknown metric 'accuracy'", "allowed: cache_bytes"]),
    ("objective_bad_length", {"objectives": [{"metric": "cache_bytes@\u0661\u0662", "direction": "minimize"}]}, (),
     ["field 'objectives.0.metric'", "ASCII digits"]),
    ("objective_zero_length", {"objectives": [{"metric": "cache_bytes@0", "direction": "minimize"}]}, (),
     ["field 'objectives.0.metric'", "whole number of tokens >= 1"]),
    ("objective_direction", {"objectives": [{"metric": "proxy_kl", "direction": "down"}]}, (),
     ["field 'objectives.0.direction'", "'minimize' or 'maximize'"]),
    ("sampler_unknown", {"sampler": {"name": "cmaes"}}, (), ["field 'sampler.name'", "'tpe'"]),
    ("sampler_grid_not_ablation", {"sampler": {"name": "grid"}}, (),
     ["field 'sampler.name'", "grid needs an ablation space"]),
    ("trials_zero", {"trials": 0}, (), ["field 'trials'", "greater than or equal to 1"]),
    ("seed_negative", {"seed": -1}, (), ["field 'seed'", "greater than or equal to 0"]),
    ("seed_huge", {"seed": 2**40}, (), ["field 'seed'", "less than or equal to 4294967295"]),
    ("memory_dtype", {"memory": {"dtype": "int8"}}, (), ["field 'memory.dtype'", "'bfloat16'"]),
    ("memory_batch_zero", {"memory": {"batch_size": 0}}, (), ["field 'memory.batch_size'", "greater than or equal"]),
    ("executor_unknown", {"executor": {"name": "slurm"}}, (), ["field 'executor.name'", "'local' or 'ray'"]),
    ("executor_concurrency_zero", {"executor": {"max_concurrent": 0}}, (),
     ["field 'executor.max_concurrent'", "greater than or equal to 1"]),
    ("executor_negative_gpus", {"executor": {"resources": {"num_gpus": -1}}}, (),
     ["field 'executor.resources.num_gpus'", "greater than or equal to 0"]),
    ("storage_not_a_url", {"storage": "nonsense"}, (),
     ["field 'storage.url'", "'nonsense' is not a database URL", "allowed: sqlite:///"]),
    ("storage_retry_negative", {"storage": {"max_retry": -1}}, (),
     ["field 'storage.max_retry'", "greater than or equal to 0"]),
    ("storage_heartbeat_zero", {"storage": {"heartbeat_interval": 0}}, (), ["field 'storage.heartbeat_interval'"]),
    ("upcycle_rope_pairs", {"upcycle": {"rope_pairs": "diagonal"}}, (),
     ["field 'upcycle.rope_pairs'", "'qk_norm', 'high_frequency' or 'uniform'"]),
    ("upcycle_rank_zero", {"upcycle": {"kv_lora_rank": 0}}, (), ["field 'upcycle.kv_lora_rank'", "greater than"]),
    ("upcycle_rope_heads_zero", {"upcycle": {"mla_rope_heads": 0}}, (), ["field 'upcycle.mla_rope_heads'"]),
    ("proxy_tokens_zero", {"proxy": {"tokens": 0}}, (), ["field 'proxy.tokens'", "greater than or equal to 1"]),
    ("proxy_plugin_missing", {"proxy": {"kind": "no_such_package.module:Proxy"}}, (),
     ["plug-in 'no_such_package.module:Proxy' cannot be imported"]),
    ("space_unknown_name", {"space": "no_such_space"}, (), ["field 'space'", "unknown search space 'no_such_space'"]),
    ("space_unknown_mixer", {"space": {"mixers": ["attention", "mamba3"]}}, (),
     ["field 'mixers'", "unknown mixer 'mamba3'", "allowed: attention, mla, mamba2"]),
    ("space_rank_zero", {"space": {"mla_ranks": [0]}}, (), ["(space)", "MLA rank 0 must be a positive multiple"]),
    ("space_count_rule", {"space": {"counts": ["attention at least 2"]}}, (),
     ["field 'counts.0'", "is not understood; allowed forms"]),
    ("space_budget_rule", {"space": {"budgets": ["latency <= 10%"]}}, (),
     ["field 'budgets.0'", "is not understood; allowed forms"]),
    ("space_budget_impossible", {"space": {"budgets": ["cache_bytes@512 <= 0.5%"]}}, (),
     ["field 'budgets.0'", "impossible constraint"]),
    ("space_fixed_out_of_range", {"space": {"fixed": {9: "A"}}}, (), ["layer 9 is out of range"]),
    ("library_pool_negative", {"library": {"pool": -1}}, (), ["field 'library.pool'", "greater than or equal to 0"]),
    ("library_ratio_zero", {"library": {"pool_cache_ratios": [0]}}, (),
     ["field 'library.pool_cache_ratios'", "cache ratios must be > 0"]),
    ("library_probe_beyond_teacher", {"proxy": {"kind": "assembled", "recipe": "proxy_tiny"},
                                      "library": {"probe_length": 4096}}, (),
     ["field 'library.probe_length'", "4096 tokens is beyond the teacher's 1024 positions"]),
    ("tiers_promote_zero", {"tiers": {"promote": 0}}, (), ["field 'tiers.promote'", "greater than or equal to 1"]),
    ("replicates_zero", {"replicates": {"seeds": 0}}, (), ["field 'replicates.seeds'", "greater than or equal to 1"]),
    ("promotion_gate", {"promotion": {"gate": "stop"}}, (), ["field 'promotion.gate'", "'warn' or 'fail'"]),
]


def _fill(value, root: Path):
    if isinstance(value, str):
        return value.replace("{root}", str(root))
    if isinstance(value, dict):
        return {k: _fill(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, root) for v in value]
    return value


@pytest.mark.parametrize("overrides, drop, expected", [pytest.param(*c[1:], id=c[0]) for c in STUDY_CASES])
def test_bad_study_file(world, case_env, capsys, overrides, drop, expected):
    path = write_study_file(case_env, _fill(overrides, world.root), drop, name="bad")
    expect_one_line(["study", str(path)], ["bad.yaml", *expected], [world.root, case_env], capsys)
    assert not (case_env / "runs").exists()


# Whole files that are not a study: (id, file text, expected).
RAW_STUDY_CASES = [
    ("malformed_yaml", "name: bad\nteacher: [unclosed\n", ["bad.yaml: malformed YAML (line 3, column 1)"]),
    ("top_level_list", "- name: bad\n", ["bad.yaml: expected a mapping at the top level, got list"]),
    ("empty_file", "", ["bad.yaml: expected a mapping at the top level, got NoneType"]),
    ("binary_file", "\x00\x01\x02", ["bad.yaml"]),
]


@pytest.mark.parametrize("text, expected", [pytest.param(*c[1:], id=c[0]) for c in RAW_STUDY_CASES])
def test_bad_study_text(world, case_env, capsys, text, expected):
    (case_env / "bad.yaml").write_text(text)
    expect_one_line(["study", "bad.yaml"], expected, [world.root, case_env], capsys)


def test_bad_space_file_names_the_space_file(world, case_env, capsys):
    (case_env / "myspace.yaml").write_text("name: s\nmixers: [attention, gdn]\nbudgets: ['cache_bytes <= 10%']\n")
    study = write_study_file(case_env, {}, name="bad")
    data = yaml.safe_load(study.read_text())
    data["space"] = "myspace.yaml"
    study.write_text(yaml.safe_dump(data))
    expect_one_line(["study", str(study)], ["myspace.yaml: field 'budgets.0'", "needs a length"],
                     [world.root, case_env], capsys)


# Command-line arguments: (id, argv with {name} placeholders, expected). `{study}` is the test study file written
# into the case's folder, `{done}` the finished study folder.
CLI_CASES = [
    ("study_trials_zero", "study {study} --trials 0", ["--trials must be >= 1"]),
    ("study_trials_text", "study {study} --trials abc", ["argument --trials: invalid int value: 'abc'"]),
    ("study_executor", "study {study} --executor slurm", ["invalid choice: 'slurm'"]),
    ("study_out_file", "study {study} --out {root}/afile", ["--out: ", "afile is a file, not a folder"]),
    ("study_out_under_file", "study {study} --out {root}/afile/sub", ["afile is a file, so"]),
    ("study_out_unwritable", "study {study} --out {unwritable}/study", ["--out: cannot write in"]),
    ("study_out_name_too_long", "study {study} --out {case}/" + "x" * 300, ["longer than the file system allows"]),
    ("study_name_too_long", "study " + "x" * 300, ["unknown study 'xxx"]),
    ("study_out_user_folder", "study {study} --out {root}/user",
     ["user exists, is not empty and does not hold a study; nothing was written"]),
    ("study_storage_not_url", "study {study} --storage nonsense", ["'nonsense' is not a database URL"]),
    ("study_storage_folder", "study {study} --storage sqlite:///{root}/user", ["--storage: ", "user is a folder"]),
    ("study_storage_unwritable", "study {study} --storage sqlite:///{unwritable}/x.db", ["cannot write in"]),
    ("study_seed_negative", "study {study} --seed -3", ["field 'seed'", "greater than or equal to 0"]),
    ("study_missing_arg", "study", ["the following arguments are required: NAME|PATH"]),
    ("study_unknown_name", "study no_such_study", ["unknown study 'no_such_study'; shipped: "]),
    ("study_missing_file", "study {case}/missing.yaml", ["missing.yaml: no such file"]),
    ("no_command", "", ["the following arguments are required: COMMAND"]),
    ("unknown_command", "studdy x", ["invalid choice: 'studdy'"]),
    ("library_out_file", "library {study} --out {root}/afile", ["afile is a file, not a folder"]),
    ("library_out_user_folder", "library {study} --out {root}/user", ["does not hold a study"]),
    ("audit_out_user_folder", "audit {study} --out {root}/user", ["does not hold a study"]),
    ("pareto_unknown", "pareto no_such_study", ["no study 'no_such_study'"]),
    ("pareto_user_folder", "pareto {root}/user", ["user"]),
    ("pareto_format", "pareto {done} --format xml", ["invalid choice: 'xml'"]),
    ("pareto_storage_not_url", "pareto {done} --storage nonsense", ["'nonsense' is not a database URL"]),
    ("pareto_manifest_bad_storage", "pareto {root}/bad_manifest", ["'nonsense' is not a database URL"]),
    ("pareto_manifest_garbage", "pareto {root}/garbage_manifest", ["garbage_manifest: not a study folder"]),
    ("show_manifest_bad_storage", "show {root}/bad_manifest 0", ["'nonsense' is not a database URL"]),
    ("dashboard_manifest_bad_storage", "dashboard {root}/bad_manifest", ["'nonsense' is not a database URL"]),
    ("show_no_trial", "show {done} 999", ["has no trial 999; trials: 0.."]),
    ("show_negative_trial", "show {done} -1", ["has no trial -1"]),
    ("show_trial_text", "show {done} first", ["invalid int value: 'first'"]),
    ("export_no_trial", "export {done} --trial 999", ["has no trial 999"]),
    ("export_pruned_trial", "export {done} --trial {pruned}", ["export a completed trial"]),
    ("export_out_folder", "export {done} --trial {complete} --out {root}/user",
     ["--out: ", "user is a folder; give a file name"]),
    ("export_out_user_file", "export {done} --trial {complete} --out {root}/afile",
     ["afile exists and is not a layout file written by hylo-search; nothing was written"]),
    ("export_out_unwritable", "export {done} --trial {complete} --out {unwritable}/layout.yaml", ["cannot write in"]),
    ("export_out_under_file", "export {done} --trial {complete} --out {root}/afile/layout.yaml",
     ["afile is a file, so"]),
    ("export_out_name_too_long", "export {done} --trial {complete} --out {case}/" + "y" * 300 + ".yaml",
     ["longer than the file system allows"]),
    ("export_missing_trial", "export {done}", ["the following arguments are required: --trial"]),
    ("dashboard_unknown", "dashboard no_such_study", ["no study 'no_such_study'"]),
    ("sensitivity_unknown", "sensitivity no_such_study", ["no_such_study"]),
    ("list_format", "list --root", ["argument --root: expected one argument"]),
]

TEACHERS = "--layout A,G,A,G --recipe tiny"
CLI_CASES += [
    ("train_out_file", f"train --teacher {{teacher}} {TEACHERS} --out {{root}}/afile", ["afile is a file"]),
    ("train_out_unwritable", f"train --teacher {{teacher}} {TEACHERS} --out {{unwritable}}/run", ["cannot write in"]),
    ("train_out_user_folder", f"train --teacher {{teacher}} {TEACHERS} --out {{root}}/user",
     ["user exists, is not empty and does not hold a training run"]),
    ("train_out_under_file", f"train --teacher {{teacher}} {TEACHERS} --out {{root}}/afile/run",
     ["afile is a file, so"]),
    ("train_teacher_no_weights", f"train --teacher {{root}}/t_noweights {TEACHERS} --out {{case}}/run",
     ["t_noweights: no model.safetensors"]),
    ("train_teacher_truncated", f"train --teacher {{root}}/t_truncated {TEACHERS} --out {{case}}/run",
     ["t_truncated/model.safetensors: not a readable safetensors file"]),
    ("train_teacher_garbage", f"train --teacher {{root}}/t_garbage {TEACHERS} --out {{case}}/run",
     ["t_garbage/model.safetensors: not a readable safetensors file"]),
    ("train_teacher_no_config", f"train --teacher {{root}}/t_noconfig {TEACHERS} --out {{case}}/run",
     ["--teacher ", "t_noconfig"]),
    ("train_teacher_missing", f"train --teacher {{root}}/none {TEACHERS} --out {{case}}/run",
     ["--teacher ", "no such directory"]),
    ("train_teacher_builtin", f"train --teacher builtin:nope {TEACHERS} --out {{case}}/run",
     ["unknown built-in teacher 'builtin:nope'"]),
    ("train_recipe_unknown", "train --teacher {teacher} --layout A,G,A,G --recipe nope --out {case}/run", ["nope"]),
    ("train_layout_mixer", "train --teacher {teacher} --layout A,Q,A,G --recipe tiny --out {case}/run",
     ["--layout: ", "unknown mixer 'Q'"]),
    ("train_layout_length", "train --teacher {teacher} --layout A,G --recipe tiny --out {case}/run",
     ["has 2 layers but the model has 4"]),
    ("train_layout_repeat", "train --teacher {teacher} --layout A*100000000000 --recipe tiny --out {case}/run",
     ["has more than 4 layers (at 'A*100000000000') but the model has 4"]),
    ("train_layout_20000_tokens", "train --teacher {teacher} --layout " + ",".join(["A", "G"] * 10_000)
     + " --recipe tiny --out {case}/run", ["has more than 4 layers"]),
    ("train_layout_folder", "train --teacher {teacher} --layout {root}/user --recipe tiny --out {case}/run",
     ["a folder must be an upcycled HyLo model"]),
    ("train_tokenizer_missing", f"train --teacher {{teacher}} {TEACHERS} --tokenizer {{root}}/none --out {{case}}/run",
     ["--tokenizer "]),
    ("train_data_missing", f"train --teacher {{teacher}} {TEACHERS} --data {{root}}/none.txt --out {{case}}/run",
     ["--data ", "none.txt: ", "does not exist"]),
    ("train_progress", f"train --teacher {{teacher}} {TEACHERS} --progress fancy --out {{case}}/run",
     ["invalid choice: 'fancy'"]),
    ("upcycle_out_file", "upcycle {teacher} --layout A,G,A,G --out {root}/afile", ["afile: is a file"]),
    ("upcycle_out_unwritable", "upcycle {teacher} --layout A,G,A,G --out {unwritable}/model", ["cannot write in"]),
    ("upcycle_out_user_folder", "upcycle {teacher} --layout A,G,A,G --out {root}/user",
     ["does not hold a previous upcycled model"]),
    ("upcycle_out_user_folder_overwrite", "upcycle {teacher} --layout A,G,A,G --out {root}/user --overwrite",
     ["does not hold a previous upcycled model"]),
    ("upcycle_out_under_file", "upcycle {teacher} --layout A,G,A,G --out {root}/afile/deep/model",
     ["afile is a file, so"]),
    ("upcycle_teacher_no_weights", "upcycle {root}/t_noweights --layout A,G,A,G --out {case}/m",
     ["t_noweights: no model.safetensors"]),
    ("upcycle_teacher_truncated", "upcycle {root}/t_truncated --layout A,G,A,G --out {case}/m",
     ["t_truncated/model.safetensors: not a readable safetensors file"]),
    ("upcycle_teacher_garbage", "upcycle {root}/t_garbage --layout A,G,A,G --no-check --out {case}/m",
     ["t_garbage/model.safetensors: not a readable safetensors file"]),
    ("upcycle_teacher_no_config", "upcycle {root}/t_noconfig --layout A,G,A,G --out {case}/m", ["t_noconfig"]),
    ("upcycle_layout_mixer", "upcycle {teacher} --layout A,G,X,G --out {case}/m", ["unknown mixer 'X'"]),
    ("upcycle_layout_rank", "upcycle {teacher} --layout A,G,L\u0661\u0662,G --out {case}/m", ["ASCII digits"]),
    ("upcycle_layout_length", "upcycle {teacher} --layout A,G --out {case}/m", ["has 2 layers but"]),
    ("upcycle_out_name_too_long", "upcycle {teacher} --layout A,G,A,G --out {case}/" + "z" * 300,
     ["File name too long"]),
    ("upcycle_layout_file", "upcycle {teacher} --layout {root}/layout_malformed.yaml --out {case}/m",
     ["layout_malformed.yaml: cannot read layout file"]),
    ("upcycle_rope_pairs", "upcycle {teacher} --layout A,L8,A,G --rope-pairs diagonal --out {case}/m",
     ["diagonal"]),
    ("upcycle_dtype", "upcycle {teacher} --layout A,G,A,G --dtype int8 --out {case}/m", ["invalid choice: 'int8'"]),
    ("promote_layout_file_name_too_long", "promote --layout-file " + "w" * 300 + " --recipe tiny --out {case}/run",
     ["no such file"]),
    ("promote_layout_file_missing", "promote --layout-file {case}/none.yaml --recipe tiny --out {case}/run",
     ["--layout-file ", "none.yaml: no such file"]),
    ("promote_both_sources", "promote {done} --trial 1 --layout-file {root}/layout_good.yaml --recipe tiny "
     "--out {case}/run", ["give either STUDY --trial N or --layout-file FILE"]),
    ("promote_no_source", "promote --recipe tiny --out {case}/run", ["give STUDY --trial N, or --layout-file FILE"]),
    ("promote_no_teacher", "promote --layout-file {root}/layout_no_teacher.yaml --recipe tiny --out {case}/run",
     ["layout_no_teacher.yaml: no 'teacher' field"]),
    ("promote_bad_upcycle", "promote --layout-file {root}/layout_bad_upcycle.yaml --recipe tiny --out {case}/run",
     ["layout_bad_upcycle.yaml: field 'upcycle' must be a mapping"]),
    ("promote_bad_code", "promote --layout-file {root}/layout_bad_code.yaml --recipe tiny --out {case}/run",
     ["layout_bad_code.yaml: field 'layout'", "unknown mixer 'Q'"]),
    ("promote_out_user_folder", "promote --layout-file {root}/layout_good.yaml --recipe tiny --out {root}/user",
     ["does not hold a training run"]),
    ("promote_out_file", "promote --layout-file {root}/layout_good.yaml --recipe tiny --out {root}/afile",
     ["afile is a file"]),
    ("probe_samples", "probe {teacher} --samples 0", ["--samples must be at least 1, got 0"]),
    ("probe_lengths", "probe {teacher} --lengths 4q", ["--tasks/--lengths: "]),
    ("probe_depth", "probe {teacher} --depth 200", ["--depth must be within 0..100"]),
    ("probe_model_missing", "probe {root}/none", ["MODEL_DIR ", "cannot load"]),
    ("probe_out_file", "probe {teacher} --out {root}/afile", ["--out: ", "afile is a file, not a folder"]),
    ("probe_out_unwritable", "probe {teacher} --out {unwritable}/results", ["cannot write in"]),
    ("eval_out_user_file", "eval {teacher} --out {root}/precious.json",
     ["precious.json exists and is not a results file written by hylo-search"]),
    ("eval_out_under_file", "eval {teacher} --out {root}/afile/results.json", ["afile is a file, so"]),
    ("eval_samples", "eval {teacher} --samples 0", ["--samples must be at least 1, got 0"]),
    ("eval_model_missing", "eval {root}/none", ["MODEL_DIR ", "not found"]),
]


@pytest.mark.parametrize("template, expected", [pytest.param(*c[1:], id=c[0]) for c in CLI_CASES])
def test_bad_argument(world, case_env, capsys, template, expected):
    write_study_file(case_env, {"name": "t4"})
    expect_one_line(argv_of(template, world, case_env), expected, [world.root, case_env], capsys)
    assert not (case_env / "runs").exists()


# Recipe files given to `train --recipe FILE`: (id, change to the shipped tiny recipe, expected).
def _tiny_recipe() -> dict:
    from hylo_model.shipped import shipped_files

    path = shipped_files("recipes")["tiny"]
    data = yaml.safe_load(path.read_text())
    data["data"]["sources"][0]["path"] = str(path.parent / data["data"]["sources"][0]["path"])
    return data


RECIPE_CASES = [
    ("unknown_field", lambda r: r.update(epochs=3), ["recipe.yaml", "epochs"]),
    ("no_stages", lambda r: r.update(stages=[]), ["recipe.yaml", "stages"]),
    ("stage_kind", lambda r: r["stages"][0].update(kind="pretrain"), ["recipe.yaml", "stages", "pretrain"]),
    ("steps_zero", lambda r: r["stages"][0].update(steps=0), ["recipe.yaml", "steps"]),
    ("seq_len_one", lambda r: r["stages"][1].update(seq_len=1), ["recipe.yaml", "seq_len"]),
    ("eval_fraction", lambda r: r["data"].update(eval_fraction=0.9), ["recipe.yaml", "eval_fraction"]),
    ("rope_type", lambda r: r["stages"][2]["rope"].update(rope_type="weird"), ["recipe.yaml", "weird"]),
    ("data_missing", lambda r: r["data"]["sources"][0].update(path="/no/such/data.txt"),
     ["recipe.yaml: field data.sources[0].path: '/no/such/data.txt' does not exist"]),
    ("stage_data_missing", lambda r: r["stages"][1].update(data={"sources": [{"path": "nothing/*.txt"}]}),
     ["recipe.yaml: field stages[1].data.sources[0].path: no data files match"]),
]


@pytest.mark.parametrize("change, expected", [pytest.param(*c[1:], id=c[0]) for c in RECIPE_CASES])
def test_bad_recipe_file(world, case_env, capsys, change, expected):
    recipe = _tiny_recipe()
    change(recipe)
    (case_env / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    argv = ["train", "--teacher", str(world.teacher), "--layout", "A,G,A,G", "--recipe", str(case_env / "recipe.yaml"),
            "--out", str(case_env / "run")]
    expect_one_line(argv, expected, [world.root, case_env], capsys)


SUBPROCESS_CASES = [
    ("study_out_file", "study {study} --out {root}/afile", "afile is a file, not a folder"),
    ("study_trials_text", "study {study} --trials abc", "invalid int value: 'abc'"),
    ("upcycle_truncated_teacher", "upcycle {root}/t_truncated --layout A,G,A,G --out {case}/m",
     "not a readable safetensors file"),
    ("train_out_user_folder", f"train --teacher {{teacher}} {TEACHERS} --out {{root}}/user",
     "does not hold a training run"),
    ("export_out_folder", "export {done} --trial {complete} --out {root}/user", "is a folder; give a file name"),
]


@pytest.mark.parametrize("template, expected", [pytest.param(*c[1:], id=c[0]) for c in SUBPROCESS_CASES])
def test_bad_input_through_the_console_script(world, tmp_path, template, expected):
    write_study_file(tmp_path, {"name": "t4"})
    argv = argv_of(template, world, tmp_path)
    before = snapshot(world.root, tmp_path)
    done = hylo(argv, tmp_path, tmp_path / "runs", timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and expected in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert snapshot(world.root, tmp_path) == before


def test_suite_has_enough_cases():
    from tests.model.test_layout_bad_input import LAYOUT_CASES

    count = (len(STUDY_CASES) + len(RAW_STUDY_CASES) + 1 + len(CLI_CASES) + len(RECIPE_CASES)
             + len(SUBPROCESS_CASES) + len(LAYOUT_CASES))
    assert count >= 80, count


def test_reports_name_their_storage_first(world, case_env, capsys):
    """`pareto`, `show` and `export` print the storage they connect to in their first line (stderr when stdout is
    JSON or CSV), and `export` replaces only its own earlier file, leaving no temporary file behind."""
    url = json.loads((world.study / "manifest.json").read_text())["storage"]
    assert main(["pareto", str(world.study), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["front"] and err.splitlines()[0].endswith(f"storage {url}")
    assert main(["pareto", str(world.study)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"storage {url}")
    assert main(["show", str(world.study), str(world.complete)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"storage {url}")
    target = case_env / "layout.yaml"
    for _ in range(2):  # the second run replaces the first run's file
        assert main(["export", str(world.study), "--trial", str(world.complete), "--out", str(target)]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].endswith(f"storage {url}") and f"wrote {target}" in out
    assert sorted(p.name for p in case_env.iterdir()) == ["layout.yaml"]


def test_builtin_teacher_is_built_in_a_private_cache(tmp_path, monkeypatch):
    """Outside a study, `builtin:tiny-random` is built under this user's cache folder (0700), never in a shared
    temporary folder another user could prepare."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = teacher_directory("builtin:tiny-random")
    cache = tmp_path / "xdg" / "hylo-search"
    assert folder.parent.parent == cache and (folder / "model.safetensors").is_file()
    assert cache.stat().st_mode & 0o777 == 0o700
    from hylo_search.commands.train import _teacher_dir

    assert _teacher_dir("builtin:tiny-random") == folder
