"""Training recipes: a YAML file of stages (``align`` → ``distill`` → ``long``), validated with pydantic.

A recipe names its data, the student's upcycling options, the runtime, held-out evaluation and the stages; every
field is described on the classes below. :func:`load_recipe` accepts a path, the name of a shipped recipe under
``studies/recipes/`` (``tiny``, ``proxy_tiny``, ...), a mapping or a :class:`Recipe`; every problem is reported as
one :class:`RecipeError` line naming the file, the field (``stages[1].kl_weight``) and the allowed values.

Parameter groups that a stage's ``lr`` names (groups it does not name stay frozen):

* ``mixers``: the mixers that differ from the teacher's (MLA, Mamba2, GDN layers) — the "new" parameters;
* ``attention``: the teacher's attention layers the layout keeps;
* ``mlp``, ``norms`` (every RMSNorm outside the mixers, final norm included), ``embeddings``, ``lm_head``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ..shipped import shipped_files

GROUPS = ("mixers", "attention", "mlp", "norms", "embeddings", "lm_head")
STAGE_KINDS = ("align", "distill", "long")
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
MEMORY_PREFIX = "memory:"  # a source path naming token documents handed to run_recipe in memory
TEXT_EXTENSIONS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
                   ".txt": "text", ".text": "text", ".md": "text"}


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file, the field and the allowed values."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """One text source. ``path``: a file, a directory (every .parquet/.jsonl/.txt file below it, sorted) or a glob,
    relative to the recipe file. ``dataset``: a Hugging Face ``datasets`` name, streamed (needs ``datasets``).
    ``tokens_field`` reads pre-tokenized documents (a list of token ids per row) instead of ``text_field``.
    Plain-text files are split into documents by blank lines (``text_split: paragraph``), per line or per file."""

    path: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    format: Literal["auto", "parquet", "jsonl", "text"] = "auto"
    text_field: str = "text"
    tokens_field: str | None = None
    text_split: Literal["paragraph", "line", "file"] = "paragraph"
    weight: float = Field(1.0, gt=0)
    min_chars: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_origin(self) -> SourceConfig:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'path' (local files) or 'dataset' (a datasets name)")
        return self


class DataConfig(_Strict):
    """Where the tokens come from and how they are packed.

    ``packing: concat`` joins documents (each followed by EOS) into rows of ``seq_len`` tokens — no HyLo mixer takes
    per-document boundaries inside a row yet, so a row may span documents. ``packing: pad`` starts every document on
    a new row (long documents are cut), right-pads, and leaves the pads out of every loss: no token sees another
    document. ``eval_fraction`` of the documents (chosen by a hash of the recipe's ``split_seed`` and the
    document's index) is held out of training for evaluation. ``shuffle_block`` rows are permuted together
    (deterministic given the seed)."""

    sources: list[SourceConfig] = Field(min_length=1)
    packing: Literal["concat", "pad"] = "concat"
    eval_fraction: float = Field(0.01, gt=0, le=0.5)
    shuffle_block: int = Field(64, ge=1)
    add_bos: bool = True
    read_batch_rows: int = Field(1024, ge=1)


class StudentConfig(_Strict):
    """Upcycling options used when the student is given as a layout (see :func:`hylo_model.upcycle`)."""

    kv_lora_rank: int | None = Field(None, ge=1)
    q_lora_rank: int | None = Field(None, ge=1)
    qk_rope_head_dim: int | None = Field(None, ge=2)
    mla_rope_heads: int = Field(1, ge=1)
    mla_kv_norm: bool = False
    rope_pairs: Literal["qk_norm", "high_frequency", "uniform"] = "qk_norm"
    init: Literal["teacher", "random"] = "teacher"
    seed: int = 0


class RuntimeConfig(_Strict):
    """``mixed_precision``/``teacher_dtype`` ``auto``: bf16 on a GPU, float32 on a CPU. ``checkpoint_every``: steps
    between checkpoints inside a stage (0 = only at stage ends). ``log_every``: steps between progress lines when
    no terminal bar is shown."""

    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    teacher_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(0, ge=0)
    keep_checkpoints: int = Field(1, ge=1)
    log_every: int = Field(10, ge=1)


class EvalConfig(_Strict):
    """Held-out evaluation: ``sequences`` packed rows of held-out documents at each stage's ``seq_len``, measured
    at the start and end of every stage (and every ``every`` steps when > 0)."""

    sequences: int = Field(8, ge=1)
    micro_batch_size: int = Field(4, ge=1)
    every: int = Field(0, ge=0)


class RopeConfig(BaseModel):
    """New RoPE parameters for attention and MLA layers (transformers' ``rope_parameters``: ``rope_type``,
    ``rope_theta``, ``factor``, ``original_max_position_embeddings``, ``beta_fast`` ...)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    rope_type: Literal["default", "linear", "dynamic", "yarn", "longrope", "llama3"] = "default"
    rope_theta: float | None = Field(None, gt=0)
    factor: float | None = Field(None, gt=0)

    def parameters(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


def _lr_mapping(value: Any) -> Any:
    """``lr: 1e-4`` means ``{mixers: 1e-4}``; a mapping gives each named group its own rate."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number or a mapping of group -> number, got {value!r}")
    if isinstance(value, (int, float)):
        value = {"mixers": value}
    if not isinstance(value, dict) or not value:
        raise ValueError(f"must be a number or a non-empty mapping of group -> number; groups: {', '.join(GROUPS)}")
    out = {}
    for group, rate in value.items():
        if group not in GROUPS:
            raise ValueError(f"unknown parameter group {group!r}; allowed: {', '.join(GROUPS)}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"{group}: learning rate must be a positive number, got {rate!r}")
        out[group] = float(rate)
    return out


class _StageBase(_Strict):
    """Fields every stage has. Exactly one of ``steps`` or ``tokens`` (optimizer steps = tokens / (batch_size *
    seq_len), rounded up). ``batch_size``: sequences per optimizer step over all processes; ``micro_batch_size``:
    sequences per forward on one process (default: as many as fit batch_size / processes)."""

    name: str | None = None
    steps: int | None = Field(None, ge=1)
    tokens: int | None = Field(None, ge=1)
    seq_len: int = Field(ge=2)
    batch_size: int = Field(ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    lr: dict[str, float]
    warmup_ratio: float = Field(0.01, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0)
    data: DataConfig | None = None

    @field_validator("lr", mode="before")
    @classmethod
    def _normalise_lr(cls, value: Any) -> Any:
        return _lr_mapping(value)

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"each beta must be in [0, 1), got {list(value)}")
        return value

    @model_validator(mode="after")
    def _length(self):
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'steps' or 'tokens'")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}")
        return self

    @property
    def num_steps(self) -> int:
        return self.steps if self.steps is not None else math.ceil(self.tokens / (self.batch_size * self.seq_len))

    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * self.num_steps)


class AlignStage(_StageBase):
    """Layer-wise alignment: each converted mixer gets the teacher's input hidden state of its layer and learns to
    reproduce the teacher's attention output (``target: mixer``), the teacher's block output through the frozen
    MLP (``block``), or both. ``loss: mse`` is the mean squared error per token; ``l2`` the per-token L2 norm of the
    difference (Zebra-Llama's ILD). Only ``mixers`` train."""

    kind: Literal["align"]
    target: Literal["mixer", "block", "both"] = "mixer"
    loss: Literal["mse", "l2"] = "mse"

    @field_validator("lr")
    @classmethod
    def _only_mixers(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != {"mixers"}:
            raise ValueError(f"an align stage trains only the converted mixers; give lr as a number or "
                             f"{{mixers: rate}}, not groups {sorted(set(value) - {'mixers'})}")
        return value


class DistillStage(_StageBase):
    """End-to-end distillation: ``kl_weight`` · τ²·KL(teacher_τ ‖ student_τ) + ``ce_weight`` · next-token CE +
    ``hidden_weight`` · mean per-layer hidden-state MSE, with τ = ``temperature``. The KL is computed from hidden
    states through the LM heads ``kl_chunk`` rows at a time. A stage with kl_weight = hidden_weight = 0 runs
    without the teacher."""

    kind: Literal["distill"]
    temperature: float = Field(1.0, gt=0)
    kl_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(0.0, ge=0)
    hidden_weight: float = Field(0.0, ge=0)
    kl_chunk: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _some_loss(self):
        if self.kl_weight == 0 and self.ce_weight == 0 and self.hidden_weight == 0:
            raise ValueError("kl_weight, ce_weight and hidden_weight are all 0: nothing to train on")
        return self

    @property
    def guided(self) -> bool:
        return self.kl_weight > 0 or self.hidden_weight > 0


class LongStage(DistillStage):
    """Long-context stage: a distill stage at a longer ``seq_len`` (a schedule is several long stages, e.g. 4K →
    16K → 64K), optionally with new RoPE parameters for the attention and MLA layers (``rope``; also applied to
    the teacher when ``rope_teacher``), and usually its own ``data`` mix of long documents. Teacher-guided when
    kl_weight or hidden_weight > 0, plain next-token training otherwise."""

    kind: Literal["long"]  # type: ignore[assignment]
    rope: RopeConfig | None = None
    rope_teacher: bool = True


Stage = Annotated[Union[AlignStage, DistillStage, LongStage], Field(discriminator="kind")]
STAGE_CLASSES = {"align": AlignStage, "distill": DistillStage, "long": LongStage}


class Recipe(_Strict):
    """A whole training recipe. ``data`` is the default for every stage without its own. ``seed`` fixes the data
    order and the student's random init; ``split_seed`` fixes which documents are held out for evaluation (None:
    ``seed``). Runs that differ only in ``seed`` under one ``split_seed`` train on the same documents in another
    order and are scored on the same held-out documents (a search's replicates)."""

    name: str | None = None
    description: str | None = None
    seed: int = 0
    split_seed: int | None = None
    data: DataConfig | None = None
    student: StudentConfig = StudentConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    eval: EvalConfig = EvalConfig()
    stages: list[Stage] = Field(min_length=1)
    _source: str = PrivateAttr("<recipe>")
    _base_dir: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _names(self) -> Recipe:
        seen: set[str] = set()
        for index, stage in enumerate(self.stages):
            if stage.name is not None and stage.name in seen:
                raise ValueError(f"stages[{index}].name {stage.name!r} is used twice; stage names must be unique")
            seen.add(stage.name or "")
        return self

    @property
    def source(self) -> str:
        return self._source

    @property
    def base_dir(self) -> Path | None:
        return self._base_dir

    def _copy_with(self, raw: dict[str, Any]) -> Recipe:
        recipe = _validate(raw, self._source)
        recipe._base_dir = self._base_dir
        return recipe

    def stage_names(self) -> list[str]:
        """``name``, or the kind (with the index when a kind repeats)."""
        kinds = [s.kind for s in self.stages]
        return [s.name or (s.kind if kinds.count(s.kind) == 1 else f"{s.kind}{i}") for i, s in enumerate(self.stages)]

    def stage_data(self, index: int) -> DataConfig | None:
        return self.stages[index].data or self.data

    def resolve_path(self, path: str) -> Path:
        """A source path as given, relative to the recipe file's folder (or the working directory)."""
        p = Path(os.path.expanduser(path))
        if path.startswith(MEMORY_PREFIX):
            return Path(path)
        return p if p.is_absolute() or self._base_dir is None else self._base_dir / p

    def with_data(self, data: DataConfig | dict | str | list[str]) -> Recipe:
        """A copy whose recipe-level data is replaced: a DataConfig or mapping, or sources — a path / folder /
        glob, ``hf:DATASET[:CONFIG]`` (a ``datasets`` name), or a list of those — keeping the recipe's packing and
        held-out settings. Stages with their own data keep it."""
        if isinstance(data, (str, os.PathLike)):
            data = [data]
        if isinstance(data, list):
            sources = []
            for item in data:
                text = str(item)
                if text.startswith("hf:"):
                    name, _, config = text[3:].partition(":")
                    sources.append({"dataset": name, **({"dataset_config": config} if config else {})})
                elif text.startswith("builtin:"):
                    raise RecipeError(f"data {text!r}: builtin sources are generated by hylo_search; pass their "
                                      "token ids (a LongTensor [N, T] or lists of ids) as data instead")
                elif text.startswith(MEMORY_PREFIX):
                    sources.append({"path": text, "tokens_field": "tokens"})
                else:
                    sources.append({"path": str(Path(text).resolve())})
            data = {"sources": sources}
            if self.data is not None:
                data = {**self.data.model_dump(exclude={"sources"}), **data}
        raw = self.model_dump(exclude_none=True)
        raw["data"] = data.model_dump() if isinstance(data, DataConfig) else data
        return self._copy_with(raw)

    def scaled(self, factor: float) -> Recipe:
        """A copy with every stage's length (steps or tokens) multiplied by ``factor`` (at least one step)."""
        raw = self.model_dump(exclude_none=True)
        for stage in raw["stages"]:
            key = "steps" if "steps" in stage else "tokens"
            stage[key] = max(1, int(round(stage[key] * factor)))
        return self._copy_with(raw)

    def total_tokens(self) -> int:
        """Tokens over all stages (optimizer steps × batch_size × seq_len)."""
        return sum(stage.num_steps * stage.batch_size * stage.seq_len for stage in self.stages)

    def with_budget(self, tokens: int) -> Recipe:
        """A copy scaled so that all stages together see about ``tokens`` tokens, in the recipe's proportions (the
        search's proxy: the same recipe with a smaller budget)."""
        if tokens < 1:
            raise RecipeError(f"token budget must be >= 1, got {tokens}")
        return self.scaled(tokens / self.total_tokens())

    def with_student(self, **options: Any) -> Recipe:
        """A copy whose upcycling options are updated (e.g. a promoted layout file's ``upcycle:`` mapping)."""
        raw = self.model_dump(exclude_none=True)
        raw["student"] = {**raw.get("student", {}), **options}
        return self._copy_with(raw)

    def with_seed(self, seed: int, split_seed: int | None = None) -> Recipe:
        """A copy with ``seed`` replaced, and ``split_seed`` when given (else the recipe's is kept)."""
        raw = self.model_dump(exclude_none=True)
        raw["seed"] = int(seed)
        if split_seed is not None:
            raw["split_seed"] = int(split_seed)
        return self._copy_with(raw)

    def fingerprint(self) -> str:
        """sha256 of the recipe with data paths made absolute: a rerun with the same fingerprint resumes."""
        raw = self.model_dump(mode="json")
        if raw["split_seed"] is None:  # the default split (the seed's) keeps the fingerprint runs were written with
            del raw["split_seed"]
        for data in [raw.get("data")] + [s.get("data") for s in raw["stages"]]:
            for source in (data or {}).get("sources", []):
                if source.get("path") and not source["path"].startswith(MEMORY_PREFIX):
                    source["path"] = str(self.resolve_path(source["path"]).resolve())
        return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


def shipped_recipes() -> dict[str, Path]:
    """Shipped recipes by name (:func:`hylo_model.shipped.shipped_files`)."""
    return shipped_files("recipes")


def load_recipe(recipe: Recipe | dict | str | os.PathLike) -> Recipe:
    """A :class:`Recipe` from a path, a shipped recipe name, a mapping, or a Recipe (returned as is)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return _validate(recipe, "<recipe>")
    path = Path(recipe)
    if not path.is_file():
        shipped = shipped_recipes()
        if str(recipe) in shipped:
            path = shipped[str(recipe)]
        else:
            raise RecipeError(f"recipe {str(recipe)!r}: no such file, and not a shipped recipe "
                              f"(shipped: {', '.join(shipped) or 'none found'})")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise RecipeError(f"{path}: cannot read recipe: {error}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping with a 'stages' list, got {type(raw).__name__}")
    result = _validate(raw, str(path))
    result._base_dir = path.resolve().parent
    return result


def _validate(raw: dict, source: str) -> Recipe:
    _check_unknown_fields(raw, source)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        raise RecipeError(_describe(error, raw, source)) from None
    recipe._source = source
    return recipe


def _check_unknown_fields(raw: dict, source: str) -> None:
    """Name unknown keys with the fields allowed there (pydantic only says 'extra inputs are not permitted')."""
    def check(data: Any, model: type[BaseModel], where: str) -> None:
        if not isinstance(data, dict) or model.model_config.get("extra") != "forbid":
            return
        unknown = [k for k in data if k not in model.model_fields]
        if unknown:
            allowed = ", ".join(model.model_fields)
            raise RecipeError(f"{source}: field '{where}{unknown[0]}': unknown field; allowed here: {allowed}")

    check(raw, Recipe, "")
    for key, model in (("student", StudentConfig), ("runtime", RuntimeConfig), ("eval", EvalConfig)):
        check(raw.get(key), model, f"{key}.")

    def check_data(data: Any, where: str) -> None:
        check(data, DataConfig, where)
        if isinstance(data, dict) and isinstance(data.get("sources"), list):
            for i, src in enumerate(data["sources"]):
                check(src, SourceConfig, f"{where}sources[{i}].")

    check_data(raw.get("data"), "data.")
    for i, stage in enumerate(raw.get("stages") or [] if isinstance(raw.get("stages"), list) else []):
        if isinstance(stage, dict) and stage.get("kind") in STAGE_CLASSES:
            check(stage, STAGE_CLASSES[stage["kind"]], f"stages[{i}].")
            check_data(stage.get("data"), f"stages[{i}].data.")


def _describe(error: ValidationError, raw: dict, source: str) -> str:
    problems = error.errors()
    first = problems[0]
    loc = [part for part in first["loc"]]
    # Discriminated unions put the stage kind in the location (stages.1.distill.lr): drop it.
    loc = [p for i, p in enumerate(loc) if not (p in STAGE_KINDS and i > 0 and isinstance(loc[i - 1], int))]
    kind = first["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("kind")
        message = (f"unknown stage kind {first['input'].get('kind')!r}" if kind == "union_tag_invalid"
                   else "missing") + f"; allowed: {', '.join(STAGE_KINDS)}"
    elif kind == "missing":
        message = "missing (required)"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if kind not in ("value_error", "assertion_error") and "input" in first:
            message += f" (got {first['input']!r})"
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return f"{source}: field '{where}': {message}{more}"


__all__ = [
    "GROUPS",
    "AlignStage",
    "DataConfig",
    "DistillStage",
    "EvalConfig",
    "LongStage",
    "Recipe",
    "RecipeError",
    "RopeConfig",
    "RuntimeConfig",
    "SourceConfig",
    "StudentConfig",
    "load_recipe",
    "shipped_recipes",
]
