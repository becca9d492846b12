"""Generate RULER probe samples at an exact length in the model's own tokens.

Each sample is a pure function of ``(seed, task, length, index)`` and the tokenizer: the sample's RNG is seeded
from a hash of the four, and everything a sample holds except the haystack size is drawn before the haystack, so
the length fit (a search over the number of haystack units) only moves the haystack. A sample's ``length`` is
RULER's: prompt tokens (``input + answer_prefix``, special tokens included) plus the task's ``max_new_tokens``,
and the largest haystack with ``length <= max_length`` is used, so a probe of length L is L minus at most one
haystack unit (a word for essays, a noise sentence of ~20 tokens, a list entry for cwe).
"""

from __future__ import annotations

import hashlib
import random
import string
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import tasks as task_specs
from .haystack import common_words, essay_words, split_sentences, word_list

# RULER's needle depths for the essay haystack: 40 evenly spaced percentages 0..100.
DEPTHS = [round(i * 100 / 39) for i in range(40)]


@dataclass
class Sample:
    """One probe in RULER's JSONL field layout (``index``, ``input``, ``outputs``, ``length``, ``answer_prefix``,
    ``token_position_answer``) plus what this package needs to score and reproduce it.

    The model is fed ``input + answer_prefix`` (:attr:`prompt`). ``depths`` are the needles' positions in the
    context in percent of its characters (0 = first line, 100 = last), in the order they appear."""

    task: str
    index: int
    input: str
    outputs: list[str]
    answer_prefix: str
    length: int
    max_length: int
    max_new_tokens: int
    seed: int = 0
    depths: list[float] = field(default_factory=list)
    token_position_answer: int | None = None

    @property
    def prompt(self) -> str:
        return self.input + self.answer_prefix

    @property
    def answer(self) -> str:
        """The canonical completion (what the fast scorer teacher-forces): the references in the format the
        prompt's own worked example uses."""
        return render_answer(self.task, self.outputs)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any], task: str | None = None) -> Sample:
        """Read our records and RULER's (which lack ``task``: give it, e.g. from the file's folder name)."""
        name = record.get("task") or task
        if name is None:
            raise ValueError("sample has no 'task' field; pass the task name")
        spec = task_specs.get_task(name)
        outputs = record["outputs"]
        return cls(
            task=spec.name, index=int(record.get("index", 0)), input=record["input"],
            outputs=[outputs] if isinstance(outputs, str) else list(outputs),
            answer_prefix=record.get("answer_prefix", ""), length=int(record.get("length", 0)),
            max_length=int(record.get("max_length", record.get("length", 0))),
            max_new_tokens=int(record.get("max_new_tokens", spec.max_new_tokens)),
            seed=int(record.get("seed", 0)), depths=list(record.get("depths", [])),
            token_position_answer=record.get("token_position_answer"),
        )


def render_answer(task: str, outputs: list[str]) -> str:
    spec = task_specs.get_task(task)
    if spec.family == "vt":  # the worked example writes `are:  ABCDE FGHIJ ...` (RULER joins with " ")
        return " " + " ".join(outputs)
    if spec.family == "cwe":  # the worked example writes `are:1. word 2. word ...`
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(outputs))
    if len(outputs) == 1:
        return " " + outputs[0]
    return " " + ", ".join(outputs[:-1]) + ", and " + outputs[-1]


def sample_seed(seed: int, task: str, length: int, index: int) -> int:
    """A stable 64-bit seed per (seed, task, length, index) (Python's hash() is salted per process)."""
    digest = hashlib.sha256(f"{seed}:{task}:{length}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def count_tokens(tokenizer, text: str) -> int:
    """Tokens the model is fed for ``text`` (special tokens such as BOS included)."""
    return len(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])


# ------------------------------------------------------------------------------------------- random values
def _random_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return f"{rng.choice(word_list('adjectives'))}-{rng.choice(word_list('nouns'))}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}; allowed: numbers, words, uuids")


def _distinct(rng: random.Random, kind: str, count: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        value = _random_value(rng, kind)
        if value not in taken:
            taken.add(value)
            out.append(value)
    return out


def _essay_text(words: tuple[str, ...], n: int) -> str:
    """The first n words, the text repeated when n exceeds it (as RULER does for long contexts)."""
    repeats = -(-n // len(words))
    return " ".join((words * repeats)[:n]) if repeats > 1 else " ".join(words[:n])


def _depths(context: str, pieces: list[str]) -> list[float]:
    """Percent of the context's characters before each piece's first occurrence, in context order."""
    size = max(1, len(context))
    return sorted(round(100 * context.find(p) / size, 2) for p in pieces)


def _insert_at_depths(
    rng: random.Random, units: list[str], needles: list[str], depth: float | None, essay: bool
) -> list[str]:
    """RULER's placement: for essays, at sentence boundaries drawn from :data:`DEPTHS`; for line haystacks, at
    random line indices. ``depth`` (percent) pins every needle there instead."""
    n = len(units)
    if essay:
        drawn = [depth] * len(needles) if depth is not None else rng.sample(DEPTHS, len(needles))
        positions = [0] + sorted(int(n * d / 100) for d in drawn) + [n]
        out: list[str] = []
        for i in range(1, len(positions)):
            out.append(" ".join(units[positions[i - 1]:positions[i]]))
            if i - 1 < len(needles):
                out.append(needles[i - 1])
        return out
    if depth is not None:
        indexes = [round(n * depth / 100)] * len(needles)
    else:
        indexes = sorted(rng.sample(range(n), len(needles)), reverse=True)
    lines = list(units)
    for index, needle in zip(indexes, needles):
        lines.insert(index, needle)
    return lines


# --------------------------------------------------------------------------------------------- the builders
# A builder maps a haystack size n to (input, answer_prefix, outputs, depths); it is built once per sample with
# the sample's answer-side randomness already drawn, and re-seeds its haystack RNG on every call.
Builder = Callable[[int], tuple[str, str, list[str], list[float]]]


def _niah_builder(spec: task_specs.TaskSpec, rng: random.Random, depth: float | None, haystack: str | None) -> Builder:
    a = spec.args
    type_k, type_v = a["type_needle_k"], a["type_needle_v"]
    taken: set[str] = set()
    keys = _distinct(rng, type_k, a["num_needle_k"], taken)
    values = [_distinct(rng, type_v, a["num_needle_v"], taken) for _ in keys]
    needles = [task_specs.NIAH_NEEDLE.format(type_needle_v=type_v, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    asked = rng.sample(range(len(keys)), a["num_needle_q"])
    query = ", ".join(keys[i] for i in asked[:-1]) + ", and " + keys[asked[-1]] if len(asked) > 1 else keys[asked[0]]
    template, prefix, noun = task_specs.NIAH_TEMPLATE, task_specs.NIAH_ANSWER_PREFIX, type_v
    if a["num_needle_q"] * a["num_needle_v"] == 1:  # RULER's singular rewrite
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template, prefix = template.replace(old, new), prefix.replace(old, new)
        noun = type_v[:-1]
    haystack_seed = rng.getrandbits(64)
    words = essay_words(haystack) if a["type_haystack"] == "essay" else None

    def build(n: int) -> tuple[str, str, list[str], list[float]]:
        hrng = random.Random(haystack_seed)
        if words is not None:
            units = split_sentences(_essay_text(words, n))
            context = " ".join(_insert_at_depths(hrng, units, needles, depth, essay=True))
        else:
            if a["type_haystack"] == "noise":
                units = [task_specs.NOISE] * n
            else:  # "needle": every line is a needle with a fresh key and value
                seen = set(taken)
                units = [task_specs.NIAH_NEEDLE.format(type_needle_v=type_v, key=_distinct(hrng, type_k, 1, seen)[0],
                                              value=_random_value(hrng, type_v)) for _ in range(n)]
            context = "\n".join(_insert_at_depths(hrng, units, needles, depth, essay=False))
        # References in reading order: per asked key, its values as they appear in the context.
        outputs = [v for i in asked for v in sorted(values[i], key=context.find)]
        return (template.format(type_needle_v=noun, context=context, query=query),
                prefix.format(type_needle_v=noun, query=query), outputs, _depths(context, needles))

    return build


def _vt_chain(rng: random.Random, num_hops: int, letters: int, value: str) -> tuple[list[str], list[str]]:
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names and name != "VAR":
            names.append(name)
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(num_hops)]
    return names, chain


def _vt_context(rng: random.Random, n: int, chain: list[str]) -> str:
    """n noise lines with the chain's lines inserted in order at random places (RULER's noise haystack)."""
    sentences = [task_specs.NOISE] * n
    positions = sorted(rng.sample(range(n), len(chain)))
    for j, position in enumerate(positions):
        sentences.insert(position + j, chain[j])
    return "\n".join(sentences).replace(". \n", ".\n")


def _vt_text(rng: random.Random, n: int, chain: list[str], names: list[str], value: str, hops: int) -> str:
    """A whole worked example: question, answer prefix and the answer."""
    context = _vt_context(rng, n, chain)
    return (task_specs.VT_TEMPLATE.format(context=context, query=value)
            + task_specs.VT_ANSWER_PREFIX.format(num_v=hops + 1, query=value) + " " + " ".join(names) + "\n")


def _vt_builder(spec: task_specs.TaskSpec, rng: random.Random, example_noise: int) -> Builder:
    hops = spec.args["num_hops"]
    value = str(rng.randint(10000, 99999))
    names, chain = _vt_chain(rng, hops, 5, value)
    # RULER's worked example: a 3-letter chain in noise sized to ~500 tokens, names and value re-drawn per sample.
    ex_value = str(rng.randint(10000, 99999))
    ex_names, ex_chain = _vt_chain(rng, hops, 3, ex_value)
    example = _vt_text(random.Random(rng.getrandbits(64)), example_noise, ex_chain, ex_names, ex_value, hops)
    haystack_seed = rng.getrandbits(64)

    def build(n: int) -> tuple[str, str, list[str], list[float]]:
        context = _vt_context(random.Random(haystack_seed), n, chain)
        text = example + "\n" + task_specs.VT_TEMPLATE.format(context=context, query=value)
        return text, task_specs.VT_ANSWER_PREFIX.format(num_v=hops + 1, query=value), list(names), _depths(context, chain)

    return build


def _extra_words(count: int, exclude: set[str]) -> list[str]:
    """Pronounceable made-up words not in ``exclude``, for cwe lengths that need more distinct words than the
    lists hold (RULER falls back to a larger English list there)."""
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ["", "n", "r", "s", "l", "m"]
    out: list[str] = []
    i = 0
    while len(out) < count:
        j, word = i, ""
        for _ in range(3):
            word += onsets[j % 14] + vowels[(j // 14) % 5]
            j //= 70
        word += codas[i % 6]
        if word not in exclude:
            out.append(word)
        i += 1
    return out


def _cwe_builder(spec: task_specs.TaskSpec, rng: random.Random, length: int) -> Builder:
    a = spec.args
    pool = list(common_words())
    order_seed = rng.getrandbits(64)
    if length < 4096:  # RULER's short-context setting
        (ex_n, ex_c, ex_u), (freq_c, freq_u) = (20, 3, 1), (6, 1)
    else:
        (ex_n, ex_c, ex_u), (freq_c, freq_u) = (40, 10, 3), (a["freq_cw"], a["freq_ucw"])
    num_cw = a["num_cw"]

    def numbered(words: list[str]) -> str:
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))

    def listing(hrng: random.Random, words: list[str], c: int, u: int) -> tuple[str, list[str]]:
        common, uncommon = words[:num_cw], words[num_cw:]
        entries = common * c + uncommon * u
        hrng.shuffle(entries)
        # References in order of first appearance, so an answer read off the list is the canonical one.
        first = {w: i for i, w in reversed(list(enumerate(entries)))}
        return numbered(entries), sorted(common, key=first.__getitem__)

    order = list(pool)
    rng.shuffle(order)

    def build(n: int) -> tuple[str, str, list[str], list[float]]:
        hrng = random.Random(order_seed)
        # A prefix of one fixed order: growing n only adds uncommon words, so the cost grows with n.
        chosen = order[:ex_n + n] + _extra_words(ex_n + n - len(order), set(pool))
        ex_context, ex_answer = listing(hrng, chosen[:ex_n], ex_c, ex_u)
        context, answer = listing(hrng, chosen[ex_n:], freq_c, freq_u)
        example = task_specs.CWE_TEMPLATE.format(context=ex_context) + task_specs.CWE_ANSWER_PREFIX + numbered(ex_answer)
        return example + "\n" + task_specs.CWE_TEMPLATE.format(context=context), task_specs.CWE_ANSWER_PREFIX, answer, []

    return build


def _zeta(alpha: float) -> float:
    from scipy.special import zeta

    return float(zeta(alpha))


def _fwe_builder(spec: task_specs.TaskSpec, rng: random.Random, length: int) -> Builder:
    alpha, wordlen = spec.args["alpha"], spec.args["coded_wordlen"]
    vocab_size = max(length // 50, 5)
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=wordlen)))
    ranked = sorted(vocab)
    rng.shuffle(ranked)
    ranked[0] = "..."  # RULER treats the most frequent word as noise
    z = _zeta(alpha)
    shuffle_seed = rng.getrandbits(64)

    def build(n: int) -> tuple[str, str, list[str], list[float]]:
        words = [w for k, w in enumerate(ranked, start=1) for _ in range(int(n * k**-alpha / z))]
        random.Random(shuffle_seed).shuffle(words)
        return task_specs.FWE_TEMPLATE.format(context=" ".join(words)), task_specs.FWE_ANSWER_PREFIX, ranked[1:4], []

    return build


# ------------------------------------------------------------------------------------------------ fitting
def _fit(cost: Callable[[int], int], target: int, low: int, what: str) -> int:
    """Largest n >= low with cost(n) <= target (cost grows with n, up to tokenizer noise)."""
    known: dict[int, int] = {}

    def fits(n: int) -> bool:
        if n not in known:
            known[n] = cost(n)
        return known[n] <= target

    if not fits(low):
        raise ValueError(f"{what}: length {target} is too short; the smallest sample needs {known[low]} tokens")
    # Estimate tokens per unit from two sizes, then bracket the answer around the estimate and bisect.
    probe = low + 16
    fits(probe)
    per_unit = max((known[probe] - known[low]) / 16, 1e-3)
    guess = max(low, int(low + (target - known[low]) / per_unit))
    step = max(1, guess // 64)
    good, bad = low, None
    if fits(guess):
        good = guess
        while fits(good + step):
            good, step = good + step, step * 2
        bad = good + step
    else:
        bad = guess
        while True:
            candidate = max(low, bad - step)
            if fits(candidate):
                good = candidate
                break
            bad, step = candidate, step * 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def generate_sample(
    task: str,
    length: int,
    index: int,
    tokenizer,
    seed: int = 0,
    depth: float | None = None,
    haystack: str | None = None,
) -> Sample:
    """One probe of ``task`` whose ``length`` (prompt tokens + max_new_tokens) is at most ``length``, as close
    as whole haystack units allow.

    ``depth`` (0..100) pins the needle(s) at that depth instead of RULER's random placement; ``haystack`` is a
    text/JSON file for the essay tasks (default: the shipped essays)."""
    spec = task_specs.get_task(task)
    if depth is not None and not 0 <= depth <= 100:
        raise ValueError(f"depth must be within 0..100 (percent), got {depth}")
    rng = random.Random(sample_seed(seed, spec.name, length, index))
    if spec.family == "niah":
        build, low = _niah_builder(spec, rng, depth, haystack), 1
    elif spec.family == "vt":
        low = spec.args["num_hops"] + 1
        # RULER sizes the worked example to 500 tokens; short probes get a quarter of their length (at least the
        # bare chain) so the question still fits.
        ex_names, ex_chain = _vt_chain(random.Random(0), spec.args["num_hops"], 3, "12345")

        def example_cost(n: int) -> int:
            return count_tokens(tokenizer, _vt_text(random.Random(0), n, ex_chain, ex_names, "12345", low - 1))

        try:
            noise = _fit(example_cost, min(500, length // 4), low, "vt worked example")
        except ValueError:
            noise = low
        build = _vt_builder(spec, rng, noise)
    elif spec.family == "cwe":
        build, low = _cwe_builder(spec, rng, length), spec.args["num_cw"] + 1
    else:
        build, low = _fwe_builder(spec, rng, length), 4

    def cost(n: int) -> int:
        text, prefix, _, _ = build(n)
        return count_tokens(tokenizer, text + prefix) + spec.max_new_tokens

    n = _fit(cost, length, low, f"task {spec.name}")
    text, prefix, outputs, depths = build(n)
    position = text.find(outputs[0])
    return Sample(
        task=spec.name, index=index, input=text, outputs=outputs, answer_prefix=prefix,
        length=cost(n), max_length=length, max_new_tokens=spec.max_new_tokens,
        seed=seed, depths=depths,
        token_position_answer=count_tokens(tokenizer, text[:position]) if position >= 0 else None,
    )


def generate_samples(
    task: str,
    length: int,
    num_samples: int,
    tokenizer,
    seed: int = 0,
    depth: float | None = None,
    haystack: str | None = None,
    start: int = 0,
) -> list[Sample]:
    """Samples ``start .. start + num_samples - 1`` of (task, length); each reproducible on its own."""
    return [generate_sample(task, length, i, tokenizer, seed, depth, haystack)
            for i in range(start, start + num_samples)]
