"""Run a causal LM over probe prompts: greedy generation and one teacher-forced pass, both with segmented prefill.

Both work for a HyLo model (its :class:`~hylo_model.HyLoCache`), for any transformers causal LM (a
``DynamicCache``), and for any object with HyLo's interface (``new_cache()`` and ``forward(input_ids,
attention_mask, position_ids, cache, use_cache, logits_to_keep)``). The cache goes in as ``cache=``, or as
``past_key_values=`` to a model whose forward still calls it that.
A long prompt is fed in segments of ``segment_size`` tokens keeping only the last position's logits, so memory
grows with the cache, not with prompt × vocabulary; generation then feeds one token per step against the cache
and never recomputes the prompt.

Batches: generation left-pads and passes the 2-D padding mask (HyLo's linear mixers skip masked tokens, attention
masks them) with per-row positions; the teacher-forced pass right-pads, which needs no mask at all in a causal
model since no real token ever sees a pad.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


class CausalLM:
    """The few calls the scorers make on a model, for HyLo and transformers models alike."""

    def __init__(self, model) -> None:
        self.model = model
        self.own_cache = hasattr(model, "new_cache")
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns, then goes in 5.40).
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        weight = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        self.device = weight.device if weight is not None else torch.device("cpu")

    def new_cache(self):
        if self.own_cache:
            return self.model.new_cache()
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        keep: int,
    ) -> torch.Tensor:
        """input_ids ``[B, T]``, attention_mask ``[B, past + T]`` or None, position_ids ``[B, T]`` ->
        logits ``[B, keep, V]`` of the last ``keep`` positions; the cache absorbs the T tokens."""
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=True, logits_to_keep=keep)
        kwargs[self.cache_arg] = cache
        return self.model(**kwargs).logits


def _segments(start: int, end: int, size: int | None) -> list[tuple[int, int]]:
    size = size if size and size > 0 else max(1, end - start)
    return [(a, min(end, a + size)) for a in range(start, end, size)]


@torch.no_grad()
def greedy_generate(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_token_ids: set[int] | None = None,
    pad_token_id: int = 0,
    segment_size: int | None = 8192,
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (token id lists), each cut after its first EOS (kept) or at
    ``max_new_tokens``. Returns one id list per prompt."""
    lm = model if isinstance(model, CausalLM) else CausalLM(model)
    eos = eos_token_ids or set()
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    padded = bool((mask == 0).any())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = lm.new_cache()
    logits = None
    for a, b in _segments(0, width, segment_size):
        logits = lm.forward(ids[:, a:b], cache, mask[:, :b] if padded else None, positions[:, a:b], keep=1)
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    next_pos = positions[:, -1:] + 1
    for step in range(max_new_tokens):
        token = logits[:, -1].argmax(-1)
        for row, t in enumerate(token.tolist()):
            if not done[row]:
                out[row].append(t)
                done[row] = t in eos
        if all(done) or step == max_new_tokens - 1:
            break
        if padded:
            mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
        logits = lm.forward(token[:, None], cache, mask if padded else None, next_pos, keep=1)
        next_pos = next_pos + 1
    return out


@dataclass
class TeacherForced:
    """One sample's teacher-forced result over its answer tokens."""

    greedy_all: bool  # every answer token is the argmax given the true prefix
    first_token: bool  # the first answer token is the argmax
    logprob: float  # sum of the answer tokens' log-probabilities
    answer_tokens: int
    greedy_tokens: int = 0  # answer tokens that are the argmax given the true prefix

    @property
    def logprob_mean(self) -> float:
        return self.logprob / max(1, self.answer_tokens)

    @property
    def partial(self) -> float:
        """Partial credit: the fraction of answer tokens that are the argmax given the true prefix."""
        return self.greedy_tokens / max(1, self.answer_tokens)


@torch.no_grad()
def teacher_forced(
    model,
    prompts: list[list[int]],
    answers: list[list[int]],
    pad_token_id: int = 0,
    segment_size: int | None = 8192,
) -> list[TeacherForced]:
    """One forward over ``prompt + answer`` per row (prefilled in segments; logits kept only where answer tokens
    are predicted). Rows are right-padded into one batch."""
    lm = model if isinstance(model, CausalLM) else CausalLM(model)
    if any(not a for a in answers):
        raise ValueError("every sample needs at least one answer token")
    rows = [p + a for p, a in zip(prompts, answers)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    ids = ids.to(lm.device)
    positions = torch.arange(width, device=lm.device)[None].expand(len(rows), -1)
    # Logits at position t predict token t + 1: the answer of row i is predicted at len(prompt_i) - 1 onwards.
    first = min(len(p) for p in prompts) - 1
    cache = lm.new_cache()
    for a, b in _segments(0, first, segment_size):
        lm.forward(ids[:, a:b], cache, None, positions[:, a:b], keep=1)
    logits = lm.forward(ids[:, first:], cache, None, positions[:, first:], keep=width - first)
    logprobs = logits.float().log_softmax(-1)
    results = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        at = torch.arange(len(answer), device=lm.device) + len(prompt) - 1 - first
        target = torch.tensor(answer, device=lm.device)
        picked = logprobs[i, at, target]
        greedy = logprobs[i, at].argmax(-1) == target
        results.append(TeacherForced(bool(greedy.all()), bool(greedy[0]), float(picked.sum()), len(answer),
                                     int(greedy.sum())))
    return results


def answer_token_ids(tokenizer, prompt_ids: list[int], prompt: str, answer: str) -> list[int]:
    """The answer's tokens as they follow the prompt: the tail of ``tokenize(prompt + answer)`` when it starts
    with the prompt's own tokens, else the answer tokenized alone (a merge across the boundary)."""
    whole = tokenizer(prompt + answer, add_special_tokens=True, verbose=False)["input_ids"]
    if whole[:len(prompt_ids)] == prompt_ids and len(whole) > len(prompt_ids):
        return whole[len(prompt_ids):]
    return tokenizer(answer, add_special_tokens=False, verbose=False)["input_ids"]


def eos_ids(model, tokenizer) -> set[int]:
    """EOS ids from the tokenizer and the model's generation config (which may list several)."""
    ids: set[int] = set()
    for source in (getattr(tokenizer, "eos_token_id", None),
                   getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return ids
