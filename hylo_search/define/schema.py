"""The study schema: what a study file (``studies/*.yaml``) may say, validated by :class:`StudyDef` (pydantic).

A study names what to search (teacher, space), how to score (proxy, probes, objectives) and how to run (sampler,
executor, storage). Objective metrics (``objectives: [{metric: ..., direction: minimize|maximize}]``):

* exact, known before any work: ``cache_bytes`` (at ``target_length``), ``cache_bytes@N``, ``cache_ratio`` (vs the
  teacher), ``params``, ``params_ratio``;
* from the proxy: ``proxy_kl`` (held-out KL(teacher || student) per token), ``proxy_loss`` (held-out next-token
  cross-entropy), and whatever else the proxy plug-in declares (``recon_error`` for ``upcycle_kl``);
* from the probes: ``probe_accuracy`` (mean over tasks at the longest probe length) and ``probe_accuracy@N``.

Cheap search at scale: ``library`` configures the per-layer block library and its sensitivity table;
``proxy.kind: assembled`` scores layouts built from library blocks without training; ``tiers`` scores every layout
that way first and trains only the best with the study's ``proxy``. Nothing here imports torch.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from .files import Definition

MEMORY_METRICS = ("cache_bytes", "cache_ratio", "params", "params_ratio")
SAMPLERS = ("tpe", "nsga2", "gp", "random", "brute_force", "grid")


class StudyData(Definition):
    """Token sequences for held-out scoring (and the training data the proxy recipe reads). ``source``:
    ``builtin:random`` (uniform tokens), ``builtin:teacher_samples`` (sampled from the teacher), a local .txt /
    .jsonl file or folder, or ``hf:DATASET[:CONFIG]`` (needs the ``datasets`` package). ``seed`` fixes the data:
    the built-in samples, the held-out sequences and the documents a recipe proxy holds out (default: the study's
    ``seed``, as transformers' ``data_seed`` defaults to its ``seed``). Pin it and runs of the study with different
    seeds score layouts on the same data, as they do on a corpus file, and differ only in the search's own
    randomness: sampler, data order, probe prompts."""

    source: str = "builtin:teacher_samples"
    heldout_sequences: int = Field(8, ge=1)
    heldout_length: int = Field(256, ge=2)  # a prediction needs a context token and a target
    seed: int | None = Field(None, ge=0, le=2**32 - 1)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value.startswith("builtin:") and value not in ("builtin:random", "builtin:teacher_samples"):
            raise ValueError(f"unknown built-in data {value!r}; allowed: builtin:random, builtin:teacher_samples, "
                             "a local .txt/.jsonl file or folder, hf:DATASET[:CONFIG]")
        return value


class UpcycleConfig(Definition):
    """Options passed to :func:`hylo_model.upcycle` for every trial (and written into exported layout files)."""

    kv_lora_rank: int | None = Field(None, ge=1)
    qk_rope_head_dim: int | None = Field(None, ge=2)
    mla_rope_heads: int = Field(1, ge=1)
    rope_pairs: Literal["qk_norm", "high_frequency", "uniform"] = "qk_norm"

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ProxyConfig(Definition):
    """``kind``: ``recipe`` (a training recipe run in-process), ``upcycle_kl`` (held-out KL of the upcycled
    student, no training), ``assembled`` (the layout built from the block library), ``auto`` (``recipe`` when a
    recipe is named, else ``upcycle_kl``; the choice is recorded with the study), or ``package.module:Class`` (a
    plug-in, see :mod:`hylo_search.scoring`)."""

    kind: str = "auto"
    recipe: str | None = None
    tokens: int | None = Field(None, ge=1)
    options: dict[str, Any] = {}


class ProbeConfig(Definition):
    """``kind``: ``ruler`` (:mod:`hylo_search.probes`), ``agreement`` (top-1 agreement with the teacher on the last
    quarter of held-out sequences of each length), ``auto`` (``ruler`` when tasks are named, else ``agreement``;
    ``none`` without lengths), ``none``, or a plug-in."""

    kind: str = "auto"
    tasks: list[str] = []
    lengths: list[Annotated[int, Field(ge=2)]] = []
    samples: int = Field(16, ge=1)
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


class ReplicatesConfig(Definition):
    """Honest noise for the answer. After the search (and a two-tier study's promotions), the finalists — the
    front's members and every baseline — are scored again with ``seeds`` seeds in all (the study's seed, then
    seed+1, ...: the proxy's data order and the probe prompts both change with it), their probes with
    ``probe_samples`` samples per (task, length). Each finalist's result is a trial of its own (tier
    ``replicated``, ``replicate_of`` its first trial) whose objective values are the means over seeds (what Optuna
    sees), with the standard errors and per-seed values in its user attrs and the Parquet table; the front is taken
    over these. ``probe_lengths``: the finalists' probe lengths (default: the study's; list longer ones to see how
    far recall extrapolates, e.g. 64K). ``race`` (default on) adds a second round: every other layout whose single
    run is within noise of the front, the noise measured by the first round's replicates (see
    :mod:`hylo_search.search.replicates`). ``seeds: 1`` turns replicates off."""

    seeds: int = Field(3, ge=1)
    race: bool = True
    probe_samples: int = Field(64, ge=1)
    probe_lengths: list[int] = []

    @field_validator("probe_lengths")
    @classmethod
    def _lengths(cls, value: list[int]) -> list[int]:
        if bad := [n for n in value if n < 1]:
            raise ValueError(f"probe lengths must be >= 1 token, got {bad[0]}")
        return value


class PromotionConfig(Definition):
    """How ``hylo-search promote`` trains a layout of this study, and how its result is checked against the
    search's promise. ``recipe``: the promotion recipe (``promote``'s default, and what ``audit`` retrains with);
    the gate probes the promoted model on fresh prompts (``gate_seed``, unlike the search's seeds) with
    ``gate_samples`` samples per (task, length) at the study's probe lengths, and ``warn``s or ``fail``s when it
    falls short of the trial's promise by more than 2 standard errors."""

    recipe: str | None = None
    gate: Literal["warn", "fail"] = "warn"
    gate_seed: int = 1_000_003
    gate_samples: int = Field(64, ge=1)


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
    num_gpus: float = Field(0, ge=0)
    num_cpus: float = Field(1, ge=0)
    memory_gb: float | None = Field(None, gt=0)


class ExecutorConfig(Definition):
    name: Literal["local", "ray"] = "local"
    address: str | None = None
    resources: Resources = Resources()
    max_concurrent: int | None = Field(None, ge=1)


class StorageConfig(Definition):
    """``url`` None = ``sqlite:///<out>/study.db``; also ``postgresql+psycopg://...``, ``mysql://...``,
    ``journal:PATH`` (Optuna's journal file). Heartbeats fail a dead driver's trials on MySQL (elsewhere the study
    lock does: :mod:`hylo_search.search.storage`)."""

    url: str | None = None
    heartbeat_interval: int = Field(60, ge=1)
    grace_period: int | None = Field(None, ge=1)
    max_retry: int = Field(3, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data


class MemoryConfig(Definition):
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    batch_size: int = Field(1, ge=1)


class StudyDef(Definition):
    name: str
    description: str = ""
    teacher: str
    tokenizer: str | None = None
    data: StudyData = StudyData()
    space: str | dict[str, Any]
    target_length: int = Field(ge=1)
    upcycle: UpcycleConfig = UpcycleConfig()
    proxy: ProxyConfig = ProxyConfig()
    probes: ProbeConfig = ProbeConfig()
    objectives: list[ObjectiveSpec]
    sampler: SamplerConfig = SamplerConfig()
    trials: int = Field(50, ge=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy's and Optuna's samplers take seeds in this range
    executor: ExecutorConfig = ExecutorConfig()
    storage: StorageConfig = StorageConfig()
    memory: MemoryConfig = MemoryConfig()
    library: LibraryConfig | None = None
    tiers: TiersConfig | None = None
    replicates: ReplicatesConfig = ReplicatesConfig()
    promotion: PromotionConfig = PromotionConfig()

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
        return self

    @property
    def data_seed(self) -> int:
        """The seed of the study's data: ``data.seed``, else the study's ``seed``."""
        return self.seed if self.data.seed is None else self.data.seed

    def library_config(self) -> LibraryConfig:
        return self.library or LibraryConfig()

    def library_recipe(self) -> str | None:
        """The recipe whose align stage trains the library's blocks: ``library.recipe``, else the proxy's."""
        return self.library_config().recipe or self.proxy.recipe
