"""Tokenizer, oracle and tiny models for the probe tests (all built locally, no downloads)."""

from __future__ import annotations

import torch


def probe_tokenizer(vocab_size: int = 3072):
    """The embedded tiny teacher's tokenizer (:func:`hylo_search.tiny_teacher.build_tokenizer`): a byte-level BPE
    trained in memory on the probe templates, essays and word lists, numbers split into up-to-3-digit tokens."""
    from hylo_search.tiny_teacher import build_tokenizer

    return build_tokenizer(vocab_size)


class _OracleCache:
    """The tokens each row has seen (pads excluded)."""

    def __init__(self) -> None:
        self.rows: list[list[int]] | None = None


class OracleLM(torch.nn.Module):
    """A stand-in causal LM that answers every probe perfectly: it finds the references by string search in the
    prompt (:func:`hylo_search.probes.solve`, never the stored outputs), writes them in the canonical format,
    then EOS. It has HyLo's interface (``new_cache()``, ``cache=``), so the scorers drive it like a HyLo model."""

    def __init__(self, tokenizer, samples) -> None:
        super().__init__()
        from hylo_search.probes import render_answer, solve
        from hylo_search.probes.scoring import answer_token_ids

        self.vocab = len(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.targets = []
        for s in samples:
            prompt = tokenizer(s.prompt)["input_ids"]
            answer = answer_token_ids(tokenizer, prompt, s.prompt, render_answer(s.task, solve(s)))
            self.targets.append(prompt + answer + [self.eos])

    def new_cache(self) -> _OracleCache:
        return _OracleCache()

    def _next(self, seen: list[int]) -> int:
        for target in self.targets:
            if len(target) > len(seen) and target[:len(seen)] == seen:
                return target[len(seen)]
        return self.eos

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True,
                logits_to_keep=0, **kwargs):
        from types import SimpleNamespace

        batch, steps = input_ids.shape
        cache = cache if cache is not None else _OracleCache()
        if cache.rows is None:
            cache.rows = [[] for _ in range(batch)]
        keep = steps if not logits_to_keep else logits_to_keep
        logits = torch.zeros(batch, keep, self.vocab)
        for row in range(batch):
            real = attention_mask[row, -steps:].bool().tolist() if attention_mask is not None else [True] * steps
            for t in range(steps):
                if real[t]:
                    cache.rows[row].append(int(input_ids[row, t]))
                if t >= steps - keep:
                    logits[row, t - (steps - keep), self._next(cache.rows[row])] = 20.0
        return SimpleNamespace(logits=logits)
