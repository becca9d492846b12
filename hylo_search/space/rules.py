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

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import numpy as np
from pydantic import field_validator, model_validator

from .definitions import Definition
from .errors import UsageError

MIXERS = ("attention", "mla", "mamba2", "gdn")
LINEAR = ("mamba2", "gdn")
CODE = {"attention": "A", "mla": "L", "mamba2": "M", "gdn": "G"}
MIXER_OF_CODE = {code: mixer for mixer, code in CODE.items()}
_ALIASES = {"attn": "attention", "full_attention": "attention", "mamba": "mamba2", "gated_deltanet": "gdn"}
_COUNT = re.compile(r"^\s*([a-z0-9_+ ]+?)\s+(?:between\s+(\d+)\s+and\s+(\d+)|(<=|>=|==)\s*(\d+))\s*$")
_BUDGET = re.compile(r"^\s*(cache_bytes|params)(?:@(\d+(?:\.\d+)?)([km]?))?\s*<=\s*(\d+(?:\.\d+)?)\s*"
                     r"(%|x|kib|mib|gib|tib)?\s*$", re.IGNORECASE)
_UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _mixer(name: Any) -> str:
    text = str(name).strip().lower()
    text = _ALIASES.get(text, text)
    if text not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; allowed: {', '.join(MIXERS)}")
    return text


def _mixer_list(value: Any) -> Any:
    if value == "all":
        return list(MIXERS)
    if isinstance(value, str):
        value = [value]
    return [_mixer(v) for v in value] if isinstance(value, list) else value


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
        if bad := [m for m in self.linear if m not in LINEAR]:
            raise ValueError(f"linear: {bad[0]!r} is not a linear block; allowed: {', '.join(LINEAR)}")
        if bad := [m for m in self.keep if m in LINEAR]:
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
        if value and (bad := [m for m in value if m not in LINEAR]):
            raise ValueError(f"{bad[0]!r} is not a linear block; allowed: {', '.join(LINEAR)}")
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
        linear = self.linear_blocks if self.linear_blocks is not None else [m for m in self.mixers if m in LINEAR]
        base_mixers = [m for m in self.mixers if m not in LINEAR or m in linear]
        ranks: list[list[int]] = [list(self.mla_ranks)] * num_layers
        allowed: list[list[str]] = [list(base_mixers)] * num_layers
        for index, rule in enumerate(self.layers):
            try:
                selected = select_layers(rule.layers, num_layers)
            except ValueError as error:
                raise fail(f"layers.{index}.layers", str(error)) from None
            for i in selected:
                if rule.mixers is not None:
                    allowed[i] = [m for m in rule.mixers if m not in LINEAR or m in linear]
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
            ranks = {int(t[1:]) for c in choices for t in c if t[1:]} | set(global_ranks)
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
    from hylo_model import Layout

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


@dataclass
class CostModel:
    """Exact per-layer costs of every token: cache bytes at each budget length and parameter counts.

    ``cache[token][seq_len]`` and ``params[token]`` are per layer, filled on first use; ``dense_params`` counts
    embeddings, final norm and LM head. Costs depend on the token only (not the layer index), so a layout's cost is
    a sum; the tests hold the sums equal to :func:`hylo_model.cache_bytes` and to a model built on the meta device.
    """

    base_config: Any
    dtype: Any = None
    batch_size: int = 1
    cache: dict[str, dict[int, int]] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    dense_params: int = 0

    def __post_init__(self) -> None:
        import torch
        from accelerate import init_empty_weights

        from hylo_model import HyLoForCausalLM

        self.dtype = self.dtype or torch.bfloat16
        # Parameters on the meta device: counting them allocates nothing, even for a 3B teacher.
        with init_empty_weights():
            one = HyLoForCausalLM(self._config("A", 1))
        total = sum(p.numel() for p in one.parameters())
        if one.config.tie_word_embeddings and one.lm_head.weight is not one.model.embed_tokens.weight:
            total -= one.lm_head.weight.numel()  # init_empty_weights may skip the tie; count one matrix
        self.dense_params = total - self.layer_params("A")

    def _config(self, token: str, num_layers: int) -> Any:
        if token == "L":
            token = f"L{self.base_config.kv_lora_rank}"
        return self.base_config.with_layout(",".join([token] * num_layers), num_hidden_layers=num_layers,
                                            mla_rope_pairs=None)

    def layer_params(self, token: str) -> int:
        from accelerate import init_empty_weights

        from hylo_model.model import HyLoDecoderLayer

        if token not in self.params:
            with init_empty_weights():
                layer = HyLoDecoderLayer(self._config(token, 1), 0)
            self.params[token] = sum(p.numel() for p in layer.parameters())
        return self.params[token]

    def layer_cache(self, token: str, seq_len: int) -> int:
        from hylo_model import layer_cache_bytes

        per_token = self.cache.setdefault(token, {})
        if seq_len not in per_token:
            per_token[seq_len] = layer_cache_bytes(self._config(token, 1), 0, seq_len, self.batch_size, self.dtype)
        return per_token[seq_len]

    def layout_cache(self, tokens: Sequence[str], seq_len: int) -> int:
        return sum(self.layer_cache(t, seq_len) for t in tokens)

    def layout_params(self, tokens: Sequence[str]) -> int:
        return self.dense_params + sum(self.layer_params(t) for t in tokens)

    def metric(self, budget_key: str, tokens: Sequence[str]) -> int:
        if budget_key == "params":
            return self.layout_params(tokens)
        return self.layout_cache(tokens, int(budget_key.split("@")[1]))


class CompiledSpace:
    """A space bound to a teacher: ``choices[i]`` lists layer i's tokens (``A``, ``L128``, ``M``, ``G``; ``L`` takes
    the global rank). Exact constraints need a :class:`CostModel` (budgets); count rules need nothing."""

    def __init__(self, space: SearchSpace, num_layers: int, choices: list[list[str]], global_ranks: list[int],
                 costs: CostModel | None) -> None:
        self.space = space
        self.num_layers = num_layers
        self.choices = choices
        self.global_ranks = global_ranks
        self.costs = costs
        self.teacher_tokens = ["A"] * num_layers
        self.free_layers = [i for i, c in enumerate(choices) if len(c) > 1]
        self.uses_global_rank = len(global_ranks) > 1 and any("L" in c for c in choices)

    # ------------------------------------------------------------------------------------------- parameters
    @property
    def is_ablation(self) -> bool:
        return self.space.ablation is not None

    def param_name(self, layer: int) -> str:
        return f"layer_{layer:02d}"

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions, in suggestion order (per-layer tokens, then the global rank; or ablation factors)."""
        from optuna.distributions import CategoricalDistribution

        if self.is_ablation:
            return {k: CategoricalDistribution(v) for k, v in self.space.ablation.factors().items()}
        dists = {self.param_name(i): CategoricalDistribution(self.choices[i]) for i in self.free_layers}
        if self.uses_global_rank:
            dists["mla_rank"] = CategoricalDistribution(self.global_ranks)
        return dists

    def suggest(self, trial: Any) -> list[str]:
        """Ask ``trial`` (an Optuna trial) for every parameter and return the layout's tokens."""
        params = {name: trial.suggest_categorical(name, dist.choices) for name, dist in self.distributions().items()}
        return self.tokens_from_params(params)

    def tokens_from_params(self, params: dict[str, Any]) -> list[str]:
        if self.is_ablation:
            from .baselines import placed_layout

            tokens = self.apply_fixed(placed_layout(self.num_layers, **params))
        else:
            tokens = [c[0] for c in self.choices]
            for i in self.free_layers:
                tokens[i] = params[self.param_name(i)]
        if "L" in tokens:
            rank = params.get("mla_rank") or self.global_ranks[0]
            tokens = [f"L{rank}" if t == "L" else t for t in tokens]
        return tokens

    def params_from_tokens(self, tokens: Sequence[str]) -> dict[str, Any] | None:
        """The per-layer parameters giving ``tokens``, or None when the layout is not in the space."""
        if self.is_ablation or len(tokens) != self.num_layers:
            return None
        params: dict[str, Any] = {}
        ranks = {int(t[1:]) for t in tokens if t.startswith("L")}
        if self.global_ranks:
            if len(ranks) > 1 or not ranks <= set(self.global_ranks):
                return None
            rank = ranks.pop() if ranks else self.global_ranks[0]
            tokens = ["L" if t.startswith("L") else t for t in tokens]
            if self.uses_global_rank:
                params["mla_rank"] = rank
        for i, token in enumerate(tokens):
            if token not in self.choices[i]:
                return None
            if i in self.free_layers:
                params[self.param_name(i)] = token
        return params

    def apply_fixed(self, tokens: list[str]) -> list[str]:
        """``tokens`` with every single-choice layer (fixed layers, one-mixer rules) set to its only choice."""
        return [c[0] if len(c) == 1 else t for c, t in zip(self.choices, tokens)]

    # ------------------------------------------------------------------------------------------- constraints
    def constraints(self, tokens: Sequence[str]) -> dict[str, float]:
        """Exact constraint values, <= 0 feasible: budgets as relative excess over the limit, count rules as
        layers over the maximum / under the minimum."""
        values: dict[str, float] = {}
        counts = _counts(tokens)
        for rule in self.space.counts:
            n = sum(counts[m] for m in rule.mixers)
            if rule.min > 0:
                values[f"count:{rule.label}>={rule.min}"] = float(rule.min - n)
            if rule.max is not None:
                values[f"count:{rule.label}<={rule.max}"] = float(n - rule.max)
        if self.space.budgets:
            costs = self._need_costs()
            for budget in self.space.budgets:
                limit = self.budget_limit(budget)
                values[budget.key] = (costs.metric(budget.key, tokens) - limit) / limit
        return values

    def budget_limit(self, budget: Budget) -> float:
        if not budget.relative:
            return budget.limit
        return budget.limit * self._need_costs().metric(budget.key, self.teacher_tokens)

    def is_feasible(self, tokens: Sequence[str]) -> bool:
        return all(v <= 0 for v in self.constraints(tokens).values())

    def _need_costs(self) -> CostModel:
        if self.costs is None:
            raise RuntimeError("this space has budgets: compile it with a CostModel (the teacher's dimensions)")
        return self.costs

    # ------------------------------------------------------------------------------------------- enumeration
    def size(self) -> int:
        if self.is_ablation:
            return math.prod(len(v) for v in self.space.ablation.factors().values())
        return math.prod(len(self.choices[i]) for i in self.free_layers) * max(1, len(self.global_ranks))

    def iter_tokens(self) -> Iterator[list[str]]:
        """Every layout of the space (ablation: every grid point), in a fixed order."""
        dists = self.distributions()
        for combo in itertools.product(*(d.choices for d in dists.values())):
            yield self.tokens_from_params(dict(zip(dists, combo)))

    def sample(self, rng: np.random.Generator) -> list[str]:
        params = {name: d.choices[rng.integers(len(d.choices))] for name, d in self.distributions().items()}
        return self.tokens_from_params(params)

    def constraint_matrix(self, index: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Vectorised :meth:`constraints` for many layouts at once (the tests hold the two equal).

        ``index``: ``[n, P]`` choice indices into :meth:`distributions` (per-layer mode only). Returns the
        constraint keys and their values ``[n, K]``, <= 0 feasible."""
        names = list(self.distributions())
        columns = {int(name[6:]): j for j, name in enumerate(names) if name.startswith("layer_")}
        rank_col = names.index("mla_rank") if "mla_rank" in names else None
        ranks = self.global_ranks if rank_col is not None else [self.global_ranks[0] if self.global_ranks else 0]
        keys = list(self.constraints(self.tokens_from_params({n: self.distributions()[n].choices[0] for n in names})))
        out = np.zeros((index.shape[0], len(keys)))
        for r, rank in enumerate(ranks):
            rows = index[:, rank_col] == r if rank_col is not None else np.ones(index.shape[0], bool)
            total = np.zeros((int(rows.sum()), len(keys)))
            for layer, choices in enumerate(self.choices):
                tokens = [f"L{rank}" if t == "L" else t for t in choices]
                table = np.array([self.contributions(t) for t in tokens])  # [choices, K]
                picked = index[rows, columns[layer]] if layer in columns else np.zeros(int(rows.sum()), int)
                total += table[picked]
            out[rows] = total
        return keys, self.finish_constraints(out)

    def contributions(self, token: str) -> list[float]:
        """One layer's additive share of each constraint's raw quantity (layer counts, cache bytes, parameters)."""
        mixer = MIXER_OF_CODE[token[0]]
        values = []
        for rule in self.space.counts:
            hit = float(mixer in rule.mixers)
            values += [hit] * ((rule.min > 0) + (rule.max is not None))
        for budget in self.space.budgets:
            costs = self._need_costs()
            values.append(costs.layer_params(token) if budget.metric == "params"
                          else costs.layer_cache(token, budget.seq_len))
        return values

    def finish_constraints(self, raw: np.ndarray) -> np.ndarray:
        """Raw sums -> constraint values, in the order :meth:`constraints` lists them."""
        out = raw.copy()
        column = 0
        for rule in self.space.counts:
            if rule.min > 0:
                out[:, column] = rule.min - raw[:, column]
                column += 1
            if rule.max is not None:
                out[:, column] = raw[:, column] - rule.max
                column += 1
        for budget in self.space.budgets:
            limit = self.budget_limit(budget)
            extra = self._need_costs().dense_params if budget.metric == "params" else 0
            out[:, column] = (raw[:, column] + extra - limit) / limit
            column += 1
        return out

    def feasible_fraction(self, samples: int = 100_000, seed: int = 0,
                          exact_limit: int = 1_000_000) -> tuple[float, str]:
        """Fraction of the space that meets every constraint: exact when the space has at most ``exact_limit``
        layouts, else estimated from ``samples`` uniform draws. Returns (fraction, how it was obtained)."""
        size = self.size()
        if self.is_ablation:
            layouts = list(self.iter_tokens())
            hits = sum(self.is_feasible(t) for t in layouts)
            return hits / len(layouts), f"exact, {hits}/{len(layouts)}"
        dims = [len(d.choices) for d in self.distributions().values()]
        if size <= exact_limit:
            index = np.stack(np.unravel_index(np.arange(size), dims), axis=1) if dims else np.zeros((1, 0), int)
        else:
            index = np.stack([np.random.default_rng(seed + j).integers(d, size=samples) for j, d in enumerate(dims)],
                             axis=1)
        _, values = self.constraint_matrix(index)
        hits = int((values <= 0).all(axis=1).sum())
        if size <= exact_limit:
            return hits / index.shape[0], f"exact, {hits}/{index.shape[0]}"
        p = hits / samples
        if hits == 0:  # the "rule of three": 95% upper bound when nothing was seen
            return 0.0, f"0 of {samples} uniform samples; below {3 / samples:.2g} at 95%"
        return p, f"estimated from {samples} uniform samples, ±{1.96 * math.sqrt(p * (1 - p) / samples):.2g}"

    def check_satisfiable(self, where: str) -> None:
        """Raise UsageError when no layout of the space meets a constraint, even taken with the count rules alone:
        a dynamic program over layers (state = capped counts per rule) gives each budget's exact minimum."""
        rules = self.space.counts
        caps = [(r.max if r.max is not None else r.min) + 1 for r in rules]

        def minimum(cost: Any) -> float:
            states: dict[tuple[int, ...], float] = {tuple(0 for _ in rules): 0.0}
            for i in range(self.num_layers):
                nxt: dict[tuple[int, ...], float] = {}
                for state, total in states.items():
                    for token in self.choices[i]:
                        mixer = MIXER_OF_CODE[token[0]]
                        key = tuple(min(c + (mixer in r.mixers), cap) for c, r, cap in zip(state, rules, caps))
                        value = total + cost(token)
                        if value < nxt.get(key, math.inf):
                            nxt[key] = value
                states = nxt
            ok = [total for state, total in states.items()
                  if all(r.min <= c and (r.max is None or c <= r.max) for c, r in zip(state, rules))]
            return min(ok) if ok else math.inf

        if minimum(lambda token: 0.0) == math.inf:
            text = "; ".join(f"{r.label} in {r.min}..{r.max if r.max is not None else 'any'}" for r in rules)
            raise UsageError(f"{where}: field 'counts': no layout of the space meets the count rules ({text})")
        for index, budget in enumerate(self.space.budgets):
            costs = self._need_costs()
            if budget.metric == "params":
                best = costs.dense_params + minimum(lambda t: costs.layer_params(self._ranked(t)))
            else:
                best = minimum(lambda t: costs.layer_cache(self._ranked(t), budget.seq_len))
            limit = self.budget_limit(budget)
            if best > limit:
                teacher = costs.metric(budget.key, self.teacher_tokens)
                allowed = f">= {best / teacher:.4g}x" if budget.relative else f">= {best:.4g}"
                raise UsageError(
                    f"{where}: field 'budgets.{index}': impossible constraint {budget.describe()}: the smallest "
                    f"layout of the space has {budget.key} = {best:.4g} = {best / teacher:.4g}x the teacher "
                    f"(limit {limit:.4g}); allowed limits: {allowed}")

    def _ranked(self, token: str) -> str:
        return f"L{min(self.global_ranks)}" if token == "L" else token


def _counts(tokens: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(MIXERS, 0)
    for token in tokens:
        counts[MIXER_OF_CODE[token[0]]] += 1
    return counts


def layout_code(tokens: Sequence[str]) -> str:
    return ",".join(tokens)
