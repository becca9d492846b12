"""Studies: what to search (teacher, space), how to score (proxy, probes, objectives), how to run (sampler,
executor, storage). Written in YAML (``studies/*.yaml``), validated by :class:`StudyDef`; :func:`load_study`
resolves a shipped name or a path, the space, the teacher's config and the plug-ins into a :class:`LoadedStudy`.

Objective metrics (``objectives: [{metric: ..., direction: minimize|maximize}]``):

* exact, known before any work: ``cache_bytes`` (at ``target_length``), ``cache_bytes@N``, ``cache_ratio`` (vs the
  teacher), ``params``, ``params_ratio``;
* from the proxy: ``proxy_kl`` (held-out KL(teacher || student) per token), ``proxy_loss`` (held-out next-token
  cross-entropy), and whatever else the proxy plug-in declares (``recon_error`` for the stand-in);
* from the probes: ``probe_accuracy`` (mean over tasks at the longest probe length) and ``probe_accuracy@N``.

Cheap search at scale (:mod:`.library`): ``library`` configures the per-layer block library and its sensitivity
table; ``proxy.kind: assembled`` scores layouts built from library blocks without training; ``tiers`` scores every
layout that way first and trains only the best with the study's ``proxy``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .definitions import Definition, read_yaml, resolve, validate
from .errors import UsageError
from .spaces import CompiledSpace, CostModel, SearchSpace

MEMORY_METRICS = ("cache_bytes", "cache_ratio", "params", "params_ratio")
SAMPLERS = ("tpe", "nsga2", "gp", "random", "brute_force", "grid")


class DataConfig(Definition):
    """Token sequences for held-out scoring (and the training data the proxy recipe reads). ``source``:
    ``builtin:random`` (uniform tokens), ``builtin:teacher_samples`` (sampled from the teacher), a local .txt /
    .jsonl file or folder, or ``hf:DATASET[:CONFIG]`` (needs the ``datasets`` package)."""

    source: str = "builtin:teacher_samples"
    heldout_sequences: int = 8
    heldout_length: int = 256

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value.startswith("builtin:") and value not in ("builtin:random", "builtin:teacher_samples"):
            raise ValueError(f"unknown built-in data {value!r}; allowed: builtin:random, builtin:teacher_samples, "
                             "a local .txt/.jsonl file or folder, hf:DATASET[:CONFIG]")
        return value


class UpcycleConfig(Definition):
    """Options passed to :func:`hylo_model.upcycle` for every trial (and written into exported layout files)."""

    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    mla_rope_heads: int = 1
    rope_pairs: Literal["qk_norm", "high_frequency", "uniform"] = "qk_norm"

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ProxyConfig(Definition):
    """``kind``: ``recipe`` (the training issue's recipe run in-process), ``upcycle_kl`` (stand-in: held-out KL of
    the upcycled student, no training), ``auto`` (recipe when :mod:`hylo_model.train` is importable, else
    upcycle_kl; the choice is recorded with the study), or ``package.module:Class`` (a plug-in)."""

    kind: str = "auto"
    recipe: str | None = None
    tokens: int | None = None
    options: dict[str, Any] = {}


class ProbeConfig(Definition):
    """``kind``: ``ruler`` (:mod:`hylo_search.probes`), ``agreement`` (stand-in: top-1 agreement with the teacher
    on the last quarter of held-out sequences of each length), ``auto``, ``none``, or a plug-in."""

    kind: str = "auto"
    tasks: list[str] = []
    lengths: list[int] = []
    samples: int = 16
    scorer: str = "fast"
    options: dict[str, Any] = {}


class LibraryConfig(Definition):
    """The per-layer block library (``hylo-search library``; :mod:`hylo_search.library`).

    Every (layer, token) of the space is trained once by the align stage(s) of ``recipe`` (default: the proxy's
    recipe) rescaled to ``tokens`` per block (default: the recipe's own length), on the study's data.
    ``layers_per_task``: converted layers of one token trained together by one worker (default: split so every
    worker of the executor has work). Sensitivity: each block swapped alone into the teacher, scored by held-out KL
    and the probe drop at ``probe_length`` (default: the study's target length; 0: no probe) with
    ``probe_samples`` samples (default: the study's). Exact solver: at study start, ``pool`` layouts minimising
    ``kl_weight`` x summed KL + ``probe_weight`` x summed probe drop under the space's constraints (and, in turn,
    under each of ``pool_cache_ratios`` x the teacher's cache at the target length), at least ``pool_distance``
    layers apart, are enqueued."""

    recipe: str | None = None
    tokens: int | None = Field(None, ge=1)
    layers_per_task: int | None = Field(None, ge=1)
    probe_length: int | None = Field(None, ge=0)
    probe_samples: int | None = Field(None, ge=1)
    pool: int = Field(0, ge=0)
    pool_distance: int = Field(1, ge=1)
    pool_cache_ratios: list[float] = []
    kl_weight: float = Field(1.0, ge=0)
    probe_weight: float = Field(0.0, ge=0)

    @field_validator("pool_cache_ratios")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        if bad := [r for r in value if not r > 0]:
            raise ValueError(f"cache ratios must be > 0 (a fraction of the teacher's cache), got {bad[0]}")
        return value


class TiersConfig(Definition):
    """Two-tier scoring. Every proposed layout is scored by ``first`` (the cheap tier; default the ``assembled``
    proxy: library blocks, no training) and counts towards ``trials``; then the ``promote`` best first-tier layouts
    (successive Pareto fronts) are scored again by the study's ``proxy`` (the second tier), each as a trial of its
    own with ``promoted_from``. Every trial records its tier (user attr and Parquet column ``tier``); the Pareto
    front is taken over the highest tier present."""

    first: ProxyConfig = ProxyConfig(kind="assembled")
    promote: int = Field(ge=1)


class ObjectiveSpec(Definition):
    metric: str
    direction: Literal["minimize", "maximize"]


class SamplerConfig(Definition):
    """An Optuna sampler. ``repair`` wraps TPE / NSGA-II / GP / random in :class:`hylo_search.sampler.RepairSampler`
    so proposals that break a count rule or budget are moved to the nearest feasible layout first."""

    name: Literal["tpe", "nsga2", "gp", "random", "brute_force", "grid"] = "tpe"
    repair: bool = True
    options: dict[str, Any] = {}


class Resources(Definition):
    num_gpus: float = 0
    num_cpus: float = 1
    memory_gb: float | None = None


class ExecutorConfig(Definition):
    name: Literal["local", "ray"] = "local"
    address: str | None = None
    resources: Resources = Resources()
    max_concurrent: int | None = None


class StorageConfig(Definition):
    """``url`` None = ``sqlite:///<out>/study.db``; also ``postgresql://...``, ``mysql://...``,
    ``journal:PATH`` (Optuna's journal file). Heartbeats fail trials of a dead driver on server storages."""

    url: str | None = None
    heartbeat_interval: int = 60
    grace_period: int | None = None
    max_retry: int = 3

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data


class MemoryConfig(Definition):
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    batch_size: int = 1


class StudyDef(Definition):
    name: str
    description: str = ""
    teacher: str
    tokenizer: str | None = None
    data: DataConfig = DataConfig()
    space: str | dict[str, Any]
    target_length: int
    upcycle: UpcycleConfig = UpcycleConfig()
    proxy: ProxyConfig = ProxyConfig()
    probes: ProbeConfig = ProbeConfig()
    objectives: list[ObjectiveSpec]
    sampler: SamplerConfig = SamplerConfig()
    trials: int = 50
    seed: int = 0
    executor: ExecutorConfig = ExecutorConfig()
    storage: StorageConfig = StorageConfig()
    memory: MemoryConfig = MemoryConfig()
    library: LibraryConfig | None = None
    tiers: TiersConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError(f"{value!r} is not a valid study name; allowed: letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _check(self) -> StudyDef:
        if not self.objectives:
            raise ValueError("objectives: give at least one {metric, direction}")
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives: metric listed twice ({metrics})")
        if self.trials < 1:
            raise ValueError("trials must be >= 1")
        return self

    def library_config(self) -> LibraryConfig:
        return self.library or LibraryConfig()

    def library_recipe(self) -> str | None:
        """The recipe whose align stage trains the library's blocks: ``library.recipe``, else the proxy's."""
        return self.library_config().recipe or self.proxy.recipe


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
        for key in ("trials", "executor", "storage", "description", "sampler"):
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
    from . import objectives

    path = resolve("studies", name_or_path)
    data = read_yaml(path)
    if seed is not None:
        data["seed"] = seed
    definition = validate(StudyDef, data, path)
    space_def, space_source = _load_space(definition.space, path)
    from .teachers import teacher_config

    try:
        config = teacher_config(definition.teacher)
    except UsageError as error:
        raise UsageError(f"{path}: field 'teacher': {error}") from None
    base = student_base_config(config, definition, path)
    costs = CostModel(base, _dtype(definition), definition.memory.batch_size)
    space = space_def.compile(config.num_hidden_layers, costs, space_source)
    proxy_kind, proxy_problem = objectives.resolve_proxy_kind(definition.proxy, path)
    probe_kind, probe_problem = objectives.resolve_probe_kind(definition.probes, path)
    first_kind = None
    if definition.tiers is not None:
        first_kind, first_problem = objectives.resolve_proxy_kind(definition.tiers.first, path, "tiers.first")
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
        problem = objectives.recipe_problem(ProxyConfig(kind="recipe", recipe=definition.library_recipe()))
        if problem:
            loaded.problems.append(f"{path}: field 'library.recipe': {problem}")
    allowed = objectives.available_metrics(loaded)
    for index, objective in enumerate(definition.objectives):
        if not objectives.metric_allowed(objective.metric, allowed):
            raise UsageError(f"{path}: field 'objectives.{index}.metric': unknown metric {objective.metric!r}; "
                             f"allowed: {', '.join(allowed)}")
    return loaded


def _load_space(space: str | dict[str, Any], study_path: Path) -> tuple[SearchSpace, str]:
    if isinstance(space, dict):
        return validate(SearchSpace, space, f"{study_path} (space)"), f"{study_path} (space)"
    local = study_path.parent / space
    path = local if local.suffix in (".yaml", ".yml") and local.is_file() else None
    try:
        path = path or resolve("search_spaces", space)
    except UsageError as error:
        raise UsageError(f"{study_path}: field 'space': {error}") from None
    return validate(SearchSpace, read_yaml(path), path), str(path)


def _dtype(definition: StudyDef) -> Any:
    import torch

    return getattr(torch, definition.memory.dtype)


def student_base_config(teacher_config: Any, definition: StudyDef, source: Any = "study") -> Any:
    """The all-attention student's HyLoConfig for this teacher and these upcycle options (no weights needed:
    the rotary pairs MLA keeps are chosen from the weights only when a trial builds its student)."""
    from hylo_model import Layout
    from hylo_model.upcycle import TeacherSource, student_config

    try:
        source = TeacherSource(teacher_config, definition.teacher, {})
        layout = Layout.uniform("attention", teacher_config.num_hidden_layers)
        return student_config(source, layout, **definition.upcycle.options())
    except ValueError as error:
        raise UsageError(f"{source}: field 'upcycle' (teacher {definition.teacher}): {error}") from None


def student_config_for(loaded: LoadedStudy, tokens: list[str]) -> Any:
    """The student's HyLoConfig for a layout, built from the config alone (what the meta-device build uses)."""
    return loaded.student_base_config.with_layout(",".join(tokens), mla_rope_pairs=None)
