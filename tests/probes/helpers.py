"""Tokenizer, oracle and tiny models for the probe tests (all built locally, no downloads)."""

from __future__ import annotations

from functools import cache

import torch

from hylo_search.probes import tasks as T
from hylo_search.probes.haystack import common_words, compose_essays


@cache
def probe_tokenizer(vocab_size: int = 3072):
    """A byte-level BPE trained in memory on the probe templates, the essay text and the word lists.

    Numbers split into chunks of up to three digits, one token each (as Llama 3's tokenizer does)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d{1,3}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # The templates are repeated so their words become single tokens, as in a real vocabulary.
    templates = [T.NOISE, T.NIAH_TEMPLATE, T.NIAH_ANSWER_PREFIX, T.NIAH_NEEDLE, T.VT_TEMPLATE, T.VT_ANSWER_PREFIX,
                 T.CWE_TEMPLATE, T.CWE_ANSWER_PREFIX, T.FWE_TEMPLATE, T.FWE_ANSWER_PREFIX]
    numbers = " ".join(f"{i:03d} {i:02d} {i}" for i in range(1000))
    corpus = [compose_essays(20000, seed=1), " ".join(common_words())] + [numbers] * 3 + templates * 50
    tok.train_from_iterator(corpus, trainer)
    from tokenizers.processors import TemplateProcessing

    bos = tok.token_to_id("<s>")
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=1 << 20)


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


def train_recall_teacher(tokenizer, induction_steps: int = 650, recall_steps: int = 250, seed: int = 0):
    """A 2-layer Llama (d=128) trained from scratch on CPU, in two stages (about a minute):

    1. copying: random runs of number tokens repeated once at a random offset, loss on the repeat — this grows
       the content-based induction circuit (a fixed offset would let the model copy by position instead);
    2. key–value recall text: niah_single_1 prompts at short length, rendered with the probe's own template
       (noise haystack, needle at a random line), loss on the answer only, mixed with stage-1 batches so the
       circuit is kept while the model learns where the answer goes.
    """
    import random

    from transformers import LlamaConfig, LlamaForCausalLM

    from hylo_search.probes.haystack import word_list

    rng = random.Random(seed)
    torch.manual_seed(seed)
    numbers = [t for t in (tokenizer.convert_tokens_to_ids(f"{i:03d}") for i in range(1000))
               if t != tokenizer.unk_token_id]
    pad = tokenizer.pad_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)

    def batch(rows: list[list[int]], labels: list[list[int]]):
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad)
        lab = torch.full((len(rows), width), -100)
        for i, (row, label) in enumerate(zip(rows, labels)):
            ids[i, :len(row)], lab[i, :len(label)] = torch.tensor(row), torch.tensor(label)
        return ids, lab

    def copying(size: int):
        rows, labels = [], []
        for _ in range(size):
            run = [rng.choice(numbers) for _ in range(rng.randint(5, 14))]
            rows.append([tokenizer.bos_token_id] + run + run)
            labels.append([-100] * (1 + len(run)) + run)
        return batch(rows, labels)

    template = T.NIAH_TEMPLATE + T.NIAH_ANSWER_PREFIX
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        template = template.replace(old, new)
    adjectives, nouns = word_list("adjectives"), word_list("nouns")

    def recall(size: int):
        rows, labels = [], []
        for _ in range(size):
            key, value = f"{rng.choice(adjectives)}-{rng.choice(nouns)}", str(rng.randint(10**6, 10**7 - 1))
            lines = [T.NOISE] * rng.randint(0, 3)
            lines.insert(rng.randint(0, len(lines)), T.NIAH_NEEDLE.format(type_needle_v="numbers", key=key,
                                                                          value=value))
            prompt = template.format(type_needle_v="number", context="\n".join(lines), query=key)
            ids = tokenizer(prompt)["input_ids"]
            answer = tokenizer(prompt + " " + value)["input_ids"][len(ids):]
            rows.append(ids + answer)
            labels.append([-100] * len(ids) + answer)
        return batch(rows, labels)

    model.train()
    for step in range(induction_steps + recall_steps):
        ids, lab = copying(32 if step < induction_steps else 8)
        loss = model(ids, labels=lab).loss
        if step >= induction_steps:
            ids, lab = recall(12)
            loss = loss + model(ids, labels=lab).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval()
