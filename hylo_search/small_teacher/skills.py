"""Training batches of the small teacher: code text plus synthetic long-context skills, a pure function of
``(seed, step)`` so that a resumed run draws exactly the batches an uninterrupted one would.

A row is ``(ids, labels)`` with -100 where no loss is taken. Skills, all written as Python so the model reads them
as code (``length`` is the row's length in tokens, give or take one line):

* ``code``: a window of the tokenized training split, loss on every token;
* ``copy``: a code window, a marker line, the same window again (loss on the repeat): induction at distance;
* ``kv``: a dict literal of ``"adjective-noun": number`` entries, then one key looked up (loss on the value);
* ``needle``: a code window with one ``SECRET_ADJ_NOUN = number`` line inserted at a random depth, then the
  question (loss on the number): a needle in a code haystack;
* ``vt``: assignment chains (``VAR_X = n``, ``VAR_Y = VAR_X``, ...) spread through a code window, then which
  variables hold ``n`` (loss on the names): variable tracking;
* ``ruler``: the RULER probes of :mod:`hylo_search.probes` (niah_single_1/2, niah_multikey_1/2, vt) in their own
  format, at training indices (from :data:`TRAIN_INDEX`) that evaluation, which uses ``0..samples-1``, never draws.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..probes import generate_sample
from ..probes.haystack import word_list
from ..probes.scoring import answer_token_ids

TRAIN_INDEX = 10**6
RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_multikey_1", "niah_multikey_2", "vt")
SKILLS = ("copy", "kv", "needle", "vt", "ruler")
Row = tuple[list[int], list[int]]


class SkillMix:
    """Rows of every kind over one token stream. ``code``: the training split's tokens, int32 [N] (documents joined,
    each starting with BOS)."""

    def __init__(self, tokenizer: Any, code: np.ndarray, seed: int) -> None:
        self.tok, self.code, self.seed = tokenizer, code, seed
        self.bos = tokenizer.bos_token_id
        self.adjectives, self.nouns = word_list("adjectives"), word_list("nouns")
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        # Positions after a token holding a newline are line starts: inserted lines go there.
        self.newline = np.array(["Ċ" in (t or "") for t in vocab] + [False] * 8)

    def rng(self, step: int) -> random.Random:
        return random.Random(f"small-teacher/{self.seed}/{step}")

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def window(self, rng: random.Random, length: int) -> list[int]:
        start = rng.randrange(0, max(1, len(self.code) - length))
        return self.code[start:start + length].tolist()

    def code_row(self, rng: random.Random, length: int) -> Row:
        ids = [self.bos] + self.window(rng, length - 1)
        return ids, [-100] + ids[1:]

    def _key(self, rng: random.Random) -> str:
        return f"{rng.choice(self.adjectives)}_{rng.choice(self.nouns)}".replace("-", "_")

    def _insert_lines(self, rng: random.Random, body: list[int], lines: list[list[int]], ordered: bool) -> list[int]:
        """Insert tokenized ``lines`` at random line starts of ``body`` (in the given order when ``ordered``)."""
        starts = [i + 1 for i in np.flatnonzero(self.newline[np.asarray(body)]).tolist()] or [len(body)]
        spots = sorted(rng.choice(starts) for _ in lines) if ordered else [rng.choice(starts) for _ in lines]
        out, last = [], 0
        for spot, line in sorted(zip(spots, range(len(lines))), key=lambda x: (x[0], x[1])):
            out += body[last:spot] + lines[line]
            last = spot
        return out + body[last:]

    def copy(self, rng: random.Random, length: int) -> Row:
        marker = self.encode("\n# the same code again:\n")
        half = max(4, (length - 1 - len(marker)) // 2)
        chunk = self.window(rng, half)
        ids = [self.bos] + chunk + marker
        return ids + chunk, [-100] * len(ids) + chunk

    def kv(self, rng: random.Random, length: int) -> Row:
        head, entries, keys = self.encode("table = {\n"), [], []
        tail_room = 24
        while 1 + len(head) + sum(len(e) for e in entries) < length - tail_room:
            key, value = f"{rng.choice(self.adjectives)}-{rng.choice(self.nouns)}", str(rng.randint(10**6, 10**7 - 1))
            if key in dict(keys):
                continue
            keys.append((key, value))
            entries.append(self.encode(f'    "{key}": {value},\n'))
        key, value = rng.choice(keys) if keys else ("a-b", "1234567")
        question = self.encode(f'}}\nassert table["{key}"] ==')
        answer = self.encode(f" {value}\n")
        ids = [self.bos] + head + [t for e in entries for t in e] + question
        return ids + answer, [-100] * len(ids) + answer

    def needle(self, rng: random.Random, length: int) -> Row:
        name, value = f"SECRET_{self._key(rng).upper()}", str(rng.randint(10**6, 10**7 - 1))
        line = self.encode(f"{name} = {value}\n")
        question = self.encode(f"\n# What is the value of {name}? Answer: {name} =")
        answer = self.encode(f" {value}\n")
        body = self.window(rng, max(8, length - 1 - len(line) - len(question) - len(answer)))
        ids = [self.bos] + self._insert_lines(rng, body, [line], ordered=True) + question
        return ids + answer, [-100] * len(ids) + answer

    def vt(self, rng: random.Random, length: int, hops: int = 4) -> Row:
        value = str(rng.randint(10**4, 10**5 - 1))
        names: list[str] = []
        while len(names) < hops + 1:
            name = f"VAR_{''.join(rng.choice('ABCDEFGHIJKLMNOPQRSTUVWXYZ') for _ in range(3))}"
            names += [name] if name not in names else []
        lines = [self.encode(f"{names[0]} = {value}\n")]
        lines += [self.encode(f"{b} = {a}\n") for a, b in zip(names, names[1:])]
        question = self.encode(f"\n# Which variables are equal to {value}? Answer:")
        answer = self.encode(" " + " ".join(names) + "\n")
        body = self.window(rng, max(8, length - 1 - sum(map(len, lines)) - len(question) - len(answer)))
        ids = [self.bos] + self._insert_lines(rng, body, lines, ordered=True) + question
        return ids + answer, [-100] * len(ids) + answer

    def ruler(self, rng: random.Random, length: int) -> Row:
        try:
            sample = generate_sample(rng.choice(RULER_TASKS), length, TRAIN_INDEX + rng.getrandbits(40), self.tok,
                                     depth=rng.uniform(0, 100))
        except ValueError:  # shorter than the task's smallest prompt (RULER's worked examples take ~500 tokens)
            return self.needle(rng, length)
        ids = self.tok(sample.prompt)["input_ids"]
        answer = answer_token_ids(self.tok, ids, sample.prompt, sample.answer)
        return ids + answer, [-100] * len(ids) + answer

    def skill_row(self, rng: random.Random, length: int, weights: dict[str, float]) -> Row:
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        ids, labels = getattr(self, kind)(rng, length)
        return ids[:length], labels[:length]


def pad_rows(rows: list[Row], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows: ``(ids, labels)``, both int64 [B, max len]."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, label) in enumerate(rows):
        ids[i, :len(row)], labels[i, :len(label)] = torch.tensor(row), torch.tensor(label)
    return ids, labels


class StepBatches(torch.utils.data.Dataset):
    """Item ``step``: that step's batch, ``{"code": (ids, labels), "skills": (ids, labels)}``. Map-style, so a
    DataLoader with workers and a resumed run both see the same batches."""

    def __init__(self, mix: SkillMix, schedule: list[dict[str, Any]], pad: int) -> None:
        self.mix, self.schedule, self.pad = mix, schedule, pad

    def stage_of(self, step: int) -> dict[str, Any]:
        for stage in self.schedule:
            if step < stage["end"]:
                return stage
        return self.schedule[-1]

    def __len__(self) -> int:
        return self.schedule[-1]["end"]

    def __getitem__(self, step: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        stage, rng = self.stage_of(step), self.mix.rng(step)
        length = stage["seq_len"]
        code = [self.mix.code_row(rng, length) for _ in range(stage["code_rows"])]
        skills = [self.mix.skill_row(rng, rng.randint(length // 8, length), stage["skills"])
                  for _ in range(stage["skill_rows"])]
        return {"code": pad_rows(code, self.pad), "skills": pad_rows(skills, self.pad)}
