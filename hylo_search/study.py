"""A study bound to everything it names: :func:`load_study` reads and validates a study file (a shipped name or a
path, :mod:`.define`), compiles its space against the teacher's config and exact cost model (:mod:`.space`), and
resolves its proxy / probe plug-ins (:mod:`.scoring`) into a :class:`LoadedStudy`. No weights are loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hylo_model import Layout
from hylo_model.upcycle import TeacherSource, student_config

from .define.files import read_yaml, resolve, validate
from .define.schema import ProxyConfig, StudyDef
from .define.teachers import check_teacher_weights, teacher_config
from .errors import UsageError
from .scoring import kinds
from .space.compiled import CompiledSpace
from .space.cost import CostModel
from .space.rules import SearchSpace


@dataclass
class LoadedStudy:
    """A validated study with everything resolved: the compiled space, the teacher's config, the student config
    builder, the chosen proxy / probe plug-ins."""

    definition: StudyDef
    source: Path
    space_def: SearchSpace
    space_source: str
    space: CompiledSpace
    teacher_config: Any
    student_base_config: Any
    proxy_kind: str
    probe_kind: str
    problems: list[str]  # what stops trials from running here (e.g. a recipe the training code lacks)
    first_kind: str | None = None  # the first tier's proxy kind (studies with ``tiers``)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.definition.objectives]

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.definition.objectives]

    def resolved(self) -> dict[str, Any]:
        """The study as plain data with the space inlined and plug-ins resolved (what workers receive)."""
        data = self.definition.model_dump(mode="json")
        data["space"] = self.space_def.model_dump(mode="json")
        data["proxy"]["kind"] = self.proxy_kind
        data["probes"]["kind"] = self.probe_kind
        if self.first_kind is not None:
            data["tiers"]["first"]["kind"] = self.first_kind
        return data

    def uses_library(self) -> bool:
        """Whether trials need the block library: an assembled proxy (either tier) or a solver pool."""
        return "assembled" in (self.proxy_kind, self.first_kind) or self.definition.library_config().pool > 0

    def fingerprint(self) -> str:
        """What makes two runs' trials comparable: every field but how many trials, how they are proposed and
        where they run (the sampler may change between runs of one study)."""
        data = self.resolved()
        # Replicates and promotion settings decide what happens after the search, not what a trial's numbers mean
        # (a replicated trial records its seeds and samples).
        for key in ("trials", "executor", "storage", "description", "sampler", "replicates", "promotion"):
            data.pop(key, None)
        for key in ("library", "tiers"):  # absent: the fingerprint of a study written before these fields
            if data.get(key) is None:
                data.pop(key, None)
        # How layouts are proposed and grouped into work may change between runs too (as the sampler may).
        for key in ("layers_per_task", "pool", "pool_distance", "pool_cache_ratios", "kl_weight", "probe_weight"):
            (data.get("library") or {}).pop(key, None)
        (data.get("tiers") or {}).pop("promote", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_study(name_or_path: str | Path, seed: int | None = None) -> LoadedStudy:
    """Read, validate and resolve a study; every problem is a one-line :class:`UsageError` naming the file."""
    path = resolve("studies", name_or_path)
    data = read_yaml(path)
    if seed is not None:
        data["seed"] = seed
    definition = validate(StudyDef, data, path)
    space_def, space_source = _load_space(definition.space, path)
    try:
        config = teacher_config(definition.teacher)
    except UsageError as error:
        raise UsageError(f"{path}: field 'teacher': {error}") from None
    base = student_base_config(config, definition, path)
    costs = CostModel(base, _dtype(definition), definition.memory.batch_size)
    space = space_def.compile(config.num_hidden_layers, costs, space_source)
    proxy_kind, proxy_problem = kinds.resolve_proxy_kind(definition.proxy, path)
    probe_kind, probe_problem = kinds.resolve_probe_kind(definition.probes, path)
    first_kind = None
    if definition.tiers is not None:
        first_kind, first_problem = kinds.resolve_proxy_kind(definition.tiers.first, path, "tiers.first")
        proxy_problem = proxy_problem or first_problem
        if first_kind == proxy_kind:
            raise UsageError(f"{path}: field 'tiers.first.kind': the first tier must differ from the proxy "
                             f"({proxy_kind!r}), which is the second tier")
    if definition.sampler.name == "grid" and not space.is_ablation:
        raise UsageError(f"{path}: field 'sampler.name': grid needs an ablation space; allowed here: "
                         "tpe, nsga2, gp, random, brute_force")
    if space.is_ablation and definition.sampler.name not in ("grid", "brute_force"):
        raise UsageError(f"{path}: field 'sampler.name': {space_source} is an ablation grid (run exhaustively); "
                         "allowed: grid, brute_force")
    loaded = LoadedStudy(definition, path, space_def, space_source, space, config, base, proxy_kind, probe_kind,
                         [p for p in (proxy_problem, probe_problem) if p], first_kind)
    if loaded.uses_library():
        if space.is_ablation and definition.library_config().pool:
            raise UsageError(f"{path}: field 'library.pool': the exact solver needs a per-layer space, not an "
                             "ablation grid; allowed here: 0")
        if not definition.library_recipe():
            raise UsageError(f"{path}: field 'library.recipe': the block library trains each block with a recipe's "
                             "align stage; name a recipe (e.g. proxy_tiny), here or in 'proxy.recipe'")
        problem = kinds.recipe_problem(ProxyConfig(kind="recipe", recipe=definition.library_recipe()))
        if problem:
            loaded.problems.append(f"{path}: field 'library.recipe': {problem}")
    allowed = kinds.available_metrics(loaded)
    for index, objective in enumerate(definition.objectives):
        if not kinds.metric_allowed(objective.metric, allowed):
            raise UsageError(f"{path}: field 'objectives.{index}.metric': unknown metric {objective.metric!r}; "
                             f"allowed: {', '.join(allowed)}")
        length = objective.metric.partition("@")[2]
        if length and not (length.isascii() and length.isdigit() and int(length) >= 1):
            raise UsageError(f"{path}: field 'objectives.{index}.metric': the length in {objective.metric!r} must "
                             "be a whole number of tokens >= 1 in ASCII digits, as in cache_bytes@4096")
    _check_lengths(loaded, path)
    return loaded


def _check_lengths(loaded: LoadedStudy, path: Path) -> None:
    """Every sequence the teacher runs (probes, held-out data, the library's probes) must fit its positions: a
    longer one would run for a very long time before failing, or extrapolate silently."""
    limit = getattr(loaded.teacher_config, "max_position_embeddings", None)
    if not limit:
        return
    definition = loaded.definition
    lengths = [(f"probes.lengths.{i}", n) for i, n in enumerate(definition.probes.lengths)]
    lengths.append(("data.heldout_length", definition.data.heldout_length))
    library = definition.library_config()
    if loaded.uses_library() and loaded.probe_kind != "none":
        probe = definition.target_length if library.probe_length is None else library.probe_length
        field = "library.probe_length" + (" (default: target_length)" if library.probe_length is None else "")
        lengths.append((field, probe))
    for field, length in lengths:
        if length > limit:
            raise UsageError(f"{path}: field '{field}': {length} tokens is beyond the teacher's {limit} positions "
                             f"(max_position_embeddings of {definition.teacher}); allowed: up to {limit}")


def check_inputs(loaded: LoadedStudy) -> None:
    """What trials will read, checked before a study folder is made: the teacher's weights (a local folder or a
    shipped built-in; a hub id's are fetched when trials run) and a local ``data.source``. One-line UsageError."""
    try:
        check_teacher_weights(loaded.definition.teacher)
    except UsageError as error:
        raise UsageError(f"{loaded.source}: field 'teacher' ({loaded.definition.teacher}): {error}") from None
    source = loaded.definition.data.source
    problem = None if source.startswith(("builtin:", "hf:")) else _local_data_problem(Path(source).expanduser())
    if problem:
        raise UsageError(f"{loaded.source}: field 'data.source' ({source}): {problem}; allowed: builtin:random, "
                         "builtin:teacher_samples, a local .txt/.jsonl file or folder, hf:DATASET[:CONFIG]")


def _local_data_problem(path: Path) -> str | None:
    """Why a local text source cannot give tokens (what :mod:`.worker.data` reads), or None. Reads little: a
    file's first non-blank bytes and a .jsonl file's first record."""
    if not os.path.exists(path):  # os.path never raises on an over-long name
        return f"{path}: no such file or folder"
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file()) \
        if os.path.isdir(path) else [path]
    if not files:
        return f"{path}: a folder without .txt or .jsonl files"
    try:
        for file in files:
            with open(file, "rb") as handle:
                if file.suffix == ".jsonl":
                    line = next((raw for raw in handle if raw.strip()), None)
                    if line is None:
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        record = None
                    if not (isinstance(record, dict) and isinstance(record.get("text"), str)):
                        return f"{file}: the first record is not a JSON object with a 'text' string"
                    return None
                while chunk := handle.read(1 << 16):
                    if chunk.strip():
                        return None
    except OSError as error:
        return f"{error.filename or path}: cannot read ({error.strerror or error})"
    return f"{path}: empty (no text to tokenise)"


def _load_space(space: str | dict[str, Any], study_path: Path) -> tuple[SearchSpace, str]:
    if isinstance(space, dict):
        return validate(SearchSpace, space, f"{study_path} (space)"), f"{study_path} (space)"
    local = study_path.parent / space
    path = local if local.suffix in (".yaml", ".yml") and os.path.isfile(local) else None
    try:
        path = path or resolve("search_spaces", space)
    except UsageError as error:
        raise UsageError(f"{study_path}: field 'space': {error}") from None
    return validate(SearchSpace, read_yaml(path), path), str(path)


def _dtype(definition: StudyDef) -> Any:
    return getattr(torch, definition.memory.dtype)


def student_base_config(config: Any, definition: StudyDef, source: Any = "study") -> Any:
    """The all-attention student's HyLoConfig for this teacher and these upcycle options (no weights needed:
    the rotary pairs MLA keeps are chosen from the weights only when a trial builds its student)."""
    try:
        teacher = TeacherSource(config, definition.teacher, {})
        layout = Layout.uniform("attention", config.num_hidden_layers)
        return student_config(teacher, layout, **definition.upcycle.options())
    except ValueError as error:
        raise UsageError(f"{source}: field 'upcycle' (teacher {definition.teacher}): {error}") from None


def student_config_for(loaded: LoadedStudy, tokens: list[str]) -> Any:
    """The student's HyLoConfig for a layout, built from the config alone (what the meta-device build uses)."""
    return loaded.student_base_config.with_layout(",".join(tokens), mla_rope_pairs=None)
