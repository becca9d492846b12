"""Search spaces: which mixer (and MLA rank) each layer may take, count rules, and budgets relative to the teacher.

A space is written in YAML (``search_spaces/*.yaml``) and validated by :class:`SearchSpace`::

    name: hybrid_gdn
    mixers: [attention, mla, gdn]       # allowed on every layer ("all" = attention, mla, mamba2, gdn)
    linear_blocks: [gdn]                # which linear blocks may appear (default: those listed in mixers)
    mla_ranks: [64, 128, 256]           # MLA latent rank choices (multiples of rank_multiple)
    rank_scope: layer                   # layer: each MLA layer picks its rank; global: one rank for all
    layers:                             # per-layer overrides: index, "a-b" range, negative index, list, "all"
      - {layers: "1-3", mixers: [attention, mla], mla_ranks: [128, 256]}
    fixed: {0: A, -1: A}                # layers that never change (layout tokens)
    counts: ["attention+mla between 2 and 6", "mamba2 == 0"]
    budgets: ["cache_bytes@64k <= 10%", "params <= 1.05x"]
    ablation: null                      # or a small factor grid run exhaustively (see AblationGrid)

:meth:`SearchSpace.compile` binds a space to a teacher depth and a :class:`CostModel` (exact per-layer cache bytes
and parameter counts from :mod:`hylo_model`), giving a :class:`CompiledSpace`: per-layer choices, Optuna
distributions, exact constraint values (<= 0 feasible), uniform sampling, repair and feasibility checks.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Sequence

from pydantic import field_validator, model_validator

from hylo_model.layout import CODE, LINEAR_MIXERS, MIXERS, Layout, mixer_name, parse_token

from ..define.files import Definition
from ..errors import UsageError
from .compiled import CompiledSpace
from .cost import CostModel

_COUNT = re.compile(r"^\s*([a-z0-9_+ ]+?)\s+(?:between\s+(\d+)\s+and\s+(\d+)|(<=|>=|==)\s*(\d+))\s*$")
_BUDGET = re.compile(r"^\s*(cache_bytes|params)(?:@(\d+(?:\.\d+)?)([km]?))?\s*<=\s*(\d+(?:\.\d+)?)\s*"
                     r"(%|x|kib|mib|gib|tib)?\s*$", re.IGNORECASE)
_UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _mixer_list(value: Any) -> Any:
    if value == "all":
        return list(MIXERS)
    if isinstance(value, str):
        value = [value]
    return [mixer_name(v) for v in value] if isinstance(value, list) else value


class LayerRule(Definition):
    """Override the allowed mixers (and MLA ranks) of some layers."""

    layers: int | str | list[int | str]
    mixers: list[str] | None = None
    mla_ranks: list[int] | None = None

    _mixers = field_validator("mixers", mode="before")(classmethod(lambda cls, v: _mixer_list(v)))


class CountRule(Definition):
    """``min <= number of layers whose mixer is in mixers <= max``. Also written ``"attention+mla between 2 and 6"``,
    ``"gdn <= 4"``, ``"mamba2 == 0"`` or ``"attention >= 1"``."""

    mixers: list[str]
    min: int = 0
    max: int | None = None

    _mixers = field_validator("mixers", mode="before")(classmethod(lambda cls, v: _mixer_list(v)))

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        match = _COUNT.match(data.lower())
        if not match:
            raise ValueError(f"count rule {data!r} is not understood; allowed forms: 'attention+mla between 2 and 6', "
                             "'gdn <= 4', 'attention >= 1', 'mamba2 == 0'")
        mixers = [m.strip() for m in match.group(1).split("+")]
        if match.group(2):
            return {"mixers": mixers, "min": int(match.group(2)), "max": int(match.group(3))}
        op, n = match.group(4), int(match.group(5))
        return {"mixers": mixers, **({"max": n} if op == "<=" else {"min": n} if op == ">=" else {"min": n, "max": n})}

    @model_validator(mode="after")
    def _ordered(self) -> CountRule:
        if self.min < 0 or (self.max is not None and self.max < self.min):
            raise ValueError(f"count rule on {'+'.join(self.mixers)}: need 0 <= min <= max, got {self.min}..{self.max}")
        return self

    @property
    def label(self) -> str:
        return "+".join(self.mixers)


class Budget(Definition):
    """A budget relative to the teacher (``limit`` x teacher when ``relative``) or absolute (bytes / parameters).
    Written ``"cache_bytes@64k <= 10%"`` (k = 1024 tokens), ``"params <= 1.05x"``, ``"cache_bytes@32k <= 2GiB"``."""

    metric: Literal["cache_bytes", "params"]
    seq_len: int | None = None
    limit: float
    relative: bool = True

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        match = _BUDGET.match(data)
        if not match:
            raise ValueError(f"budget {data!r} is not understood; allowed forms: 'cache_bytes@64k <= 10%', "
                             "'params <= 1.05x', 'cache_bytes@32768 <= 2GiB' (metrics: cache_bytes, params)")
        metric, length, scale, value, unit = match.groups()
        seq_len = None
        if length is not None:
            seq_len = int(float(length) * {"": 1, "k": 1024, "m": 1024**2}[scale.lower()])
        unit = (unit or "").lower()
        limit = float(value) / 100 if unit == "%" else float(value) * _UNITS.get(unit, 1)
        return {"metric": metric, "seq_len": seq_len, "limit": limit, "relative": unit in ("%", "x")}

    @model_validator(mode="after")
    def _check(self) -> Budget:
        if self.metric == "cache_bytes" and not self.seq_len:
            raise ValueError("a cache_bytes budget needs a length: 'cache_bytes@64k <= 10%'")
        if self.metric == "params" and self.seq_len:
            raise ValueError("a params budget takes no length: 'params <= 1.05x'")
        if self.limit <= 0:
            raise ValueError(f"budget limit must be > 0, got {self.limit}")
        return self

    @property
    def key(self) -> str:
        return f"cache_bytes@{self.seq_len}" if self.metric == "cache_bytes" else "params"

    def describe(self) -> str:
        limit = f"{self.limit:.4g}x teacher" if self.relative else f"{self.limit:.4g}"
        return f"{self.key} <= {limit}"


class AblationGrid(Definition):
    """A small factor grid run exhaustively: layers at ``placement`` positions keep a ``keep`` mixer (``n_keep`` of
    them, MLA at ``mla_rank``), every other layer becomes ``linear``; fixed layers still apply."""

    placement: list[Literal["uniform", "smart", "end", "start"]] = ["uniform"]
    keep: list[str] = ["attention"]
    n_keep: list[int]
    linear: list[str] = ["gdn"]
    mla_rank: list[int] = []

    _keep = field_validator("keep", "linear", mode="before")(classmethod(lambda cls, v: _mixer_list(v)))

    @model_validator(mode="after")
    def _check(self) -> AblationGrid:
        if bad := [m for m in self.linear if m not in LINEAR_MIXERS]:
            raise ValueError(f"linear: {bad[0]!r} is not a linear block; allowed: {', '.join(LINEAR_MIXERS)}")
        if bad := [m for m in self.keep if m in LINEAR_MIXERS]:
            raise ValueError(f"keep: {bad[0]!r} is a linear block; allowed: attention, mla")
        if "mla" in self.keep and not self.mla_rank:
            raise ValueError("keep includes mla: give mla_rank choices")
        if any(n < 0 for n in self.n_keep):
            raise ValueError("n_keep values must be >= 0")
        return self

    def factors(self) -> dict[str, list[Any]]:
        grid: dict[str, list[Any]] = {"placement": list(self.placement), "keep": list(self.keep),
                                      "n_keep": list(self.n_keep), "linear": list(self.linear)}
        if "mla" in self.keep:
            grid["mla_rank"] = list(self.mla_rank)
        return grid


class SearchSpace(Definition):
    name: str
    description: str = ""
    num_layers: int | None = None
    mixers: list[str] = list(MIXERS)
    linear_blocks: list[str] | None = None
    mla_ranks: list[int] = []
    rank_scope: Literal["layer", "global"] = "layer"
    rank_multiple: int = 8
    layers: list[LayerRule] = []
    fixed: dict[int | str, str] = {}
    counts: list[CountRule] = []
    budgets: list[Budget] = []
    ablation: AblationGrid | None = None

    _mixers = field_validator("mixers", mode="before")(classmethod(lambda cls, v: _mixer_list(v)))

    @field_validator("linear_blocks", mode="before")
    @classmethod
    def _linear(cls, value: Any) -> Any:
        value = _mixer_list(value) if value is not None else None
        if value and (bad := [m for m in value if m not in LINEAR_MIXERS]):
            raise ValueError(f"{bad[0]!r} is not a linear block; allowed: {', '.join(LINEAR_MIXERS)}")
        return value

    @model_validator(mode="after")
    def _ranks(self) -> SearchSpace:
        ranks = list(self.mla_ranks) + [r for rule in self.layers for r in rule.mla_ranks or []]
        if self.ablation:
            ranks += self.ablation.mla_rank
        for rank in ranks:
            if rank < 1 or rank % self.rank_multiple:
                raise ValueError(f"MLA rank {rank} must be a positive multiple of rank_multiple={self.rank_multiple}")
        unranked = "mla" in self.mixers or any("mla" in (r.mixers or []) and not r.mla_ranks for r in self.layers)
        if unranked and not self.ablation and not self.mla_ranks:
            raise ValueError("mla is allowed: give mla_ranks (e.g. [64, 128, 256])")
        return self

    def compile(self, num_layers: int, costs: CostModel | None = None, source: str = "") -> CompiledSpace:
        """Bind to a teacher with ``num_layers`` layers; errors (UsageError) name ``source`` and the field."""
        where = source or self.name

        def fail(fld: str, message: str) -> UsageError:
            return UsageError(f"{where}: field '{fld}': {message}")

        if self.num_layers is not None and self.num_layers != num_layers:
            raise fail("num_layers", f"the space is for {self.num_layers} layers but the teacher has {num_layers}")
        linear = self.linear_blocks if self.linear_blocks is not None else [m for m in self.mixers if m in LINEAR_MIXERS]
        base_mixers = [m for m in self.mixers if m not in LINEAR_MIXERS or m in linear]
        ranks: list[list[int]] = [list(self.mla_ranks)] * num_layers
        allowed: list[list[str]] = [list(base_mixers)] * num_layers
        for index, rule in enumerate(self.layers):
            try:
                selected = select_layers(rule.layers, num_layers)
            except ValueError as error:
                raise fail(f"layers.{index}.layers", str(error)) from None
            for i in selected:
                if rule.mixers is not None:
                    allowed[i] = [m for m in rule.mixers if m not in LINEAR_MIXERS or m in linear]
                if rule.mla_ranks is not None:
                    ranks[i] = list(rule.mla_ranks)
        choices: list[list[str]] = []
        for i in range(num_layers):
            tokens = []
            for mixer in allowed[i]:
                if mixer != "mla":
                    tokens.append(CODE[mixer])
                elif self.rank_scope == "global":
                    tokens.append("L")
                else:
                    tokens.extend(f"L{r}" for r in ranks[i])
            choices.append(tokens)
        global_ranks = sorted(set(self.mla_ranks)) if self.rank_scope == "global" else []
        for key, token in self.fixed.items():
            try:
                (i,) = select_layers(key, num_layers, single=True)
                code = canonical_token(token, ranks[i] if self.rank_scope == "layer" else None)
            except ValueError as error:
                raise fail(f"fixed.{key}", str(error)) from None
            choices[i] = [code]
        for i, tokens in enumerate(choices):
            if not tokens:
                raise fail("layers", f"layer {i} has no allowed mixer (linear_blocks={linear}, mixers={allowed[i]})")
        compiled = CompiledSpace(self, num_layers, choices, global_ranks, costs)
        if costs is not None:
            ranks = {rank for c in choices for _, rank in map(parse_token, c) if rank} | set(global_ranks)
            ranks |= set(self.ablation.mla_rank) if self.ablation else set()
            limit = costs.base_config.max_kv_lora_rank
            if ranks and max(ranks) > limit:
                raise fail("mla_ranks", f"rank {max(ranks)} is larger than this teacher allows; allowed: 1..{limit}")
        if self.ablation is None:
            compiled.check_satisfiable(where)
        return compiled


def select_layers(selector: int | str | Sequence[int | str], num_layers: int, single: bool = False) -> list[int]:
    """Layer indices from ``3``, ``-1``, ``"2-5"`` (inclusive), ``"first"``, ``"last"``, ``"all"`` or a list of them."""
    items = list(selector) if isinstance(selector, (list, tuple)) else [selector]
    found: list[int] = []
    for item in items:
        text = str(item).strip().lower()
        if text == "all":
            found.extend(range(num_layers))
            continue
        text = {"first": "0", "last": "-1"}.get(text, text)
        match = re.fullmatch(r"(-?\d+)(?:\s*-\s*(-?\d+))?", text)
        if not match:
            raise ValueError(f"layer selector {item!r} is not understood; allowed: an index (negative counts from the "
                             "end), 'a-b', 'first', 'last', 'all', or a list of these")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) else lo
        for value in (lo, hi):
            if not -num_layers <= value < num_layers:
                raise ValueError(f"layer {value} is out of range for a {num_layers}-layer teacher "
                                 f"(allowed: 0..{num_layers - 1} or -{num_layers}..-1)")
        found.extend(range(lo % num_layers, hi % num_layers + 1))
    if single and len(found) != 1:
        raise ValueError(f"selector {selector!r} must name exactly one layer")
    return found


def canonical_token(token: str, ranks: list[int] | None) -> str:
    """A layout token (``A``, ``attention``, ``L128``, ``mla``...) as the space's token; ``ranks`` None = global."""
    spec = Layout.parse(str(token)).layers
    if len(spec) != 1:
        raise ValueError(f"{token!r} must be a single layer token")
    (layer,) = spec
    if layer.mixer != "mla":
        return CODE[layer.mixer]
    if ranks is None:
        if layer.kv_lora_rank is not None:
            raise ValueError(f"{token!r}: with rank_scope global, MLA layers take the global rank; write 'L'")
        return "L"
    if layer.kv_lora_rank is None:
        if len(ranks) == 1:
            return f"L{ranks[0]}"
        raise ValueError(f"{token!r} needs a rank; allowed: {', '.join(f'L{r}' for r in ranks)}")
    return f"L{layer.kv_lora_rank}"


