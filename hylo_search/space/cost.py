"""Exact costs of layouts: cache bytes at any length and parameter counts, per layer token, from :mod:`hylo_model`
(the model's own ``layer_cache_bytes`` and a meta-device build), and the memory metrics a trial records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from accelerate import init_empty_weights

from hylo_model import HyLoForCausalLM, layer_cache_bytes
from hylo_model.model import HyLoDecoderLayer


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
        if token not in self.params:
            with init_empty_weights():
                layer = HyLoDecoderLayer(self._config(token, 1), 0)
            self.params[token] = sum(p.numel() for p in layer.parameters())
        return self.params[token]

    def layer_cache(self, token: str, seq_len: int) -> int:
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


def memory_metrics(loaded: Any, tokens: list[str]) -> dict[str, float]:
    """Exact cache bytes (at the target length and any length an objective names) and parameter counts of
    ``tokens`` in ``loaded`` (a :class:`~hylo_search.study.LoadedStudy`), and the teacher's, with their ratios."""
    costs, space = loaded.space.costs, loaded.space
    lengths = {loaded.definition.target_length}
    lengths |= {int(m.split("@")[1]) for m in loaded.metrics if m.startswith("cache_bytes@")}
    values: dict[str, float] = {}
    for length in sorted(lengths):
        values[f"cache_bytes@{length}"] = costs.layout_cache(tokens, length)
    target = loaded.definition.target_length
    values["cache_bytes"] = values[f"cache_bytes@{target}"]
    values["teacher_cache_bytes"] = costs.layout_cache(space.teacher_tokens, target)
    values["cache_ratio"] = values["cache_bytes"] / values["teacher_cache_bytes"]
    values["params"] = costs.layout_params(tokens)
    values["teacher_params"] = costs.layout_params(space.teacher_tokens)
    values["params_ratio"] = values["params"] / values["teacher_params"]
    return values
