"""The RULER synthetic tasks this package generates: templates, answer prefixes, generation budgets, metrics.

Everything here follows NVIDIA/RULER (``scripts/synthetic.yaml``, ``scripts/data/synthetic/constants.py``,
``scripts/eval/synthetic/constants.py``) for the ``base`` (no chat) model template:

=================  ======================================================================  ==============
task               haystack / needles                                                      metric
=================  ======================================================================  ==============
niah_single_1      noise sentences; key = adjective-noun word, value = 7-digit number      string_match_all
niah_single_2      essay; word key, number value                                           string_match_all
niah_single_3      essay; word key, UUID value                                             string_match_all
niah_multikey_1    essay; 4 word keys (one asked), number values                           string_match_all
niah_multikey_2    every haystack line is a needle (word keys, numbers); one is asked     string_match_all
niah_multikey_3    every haystack line is a needle (UUID keys and values); one is asked   string_match_all
niah_multivalue    essay; one word key with 4 number values                                string_match_all
niah_multiquery    essay; 4 word keys, all 4 asked                                         string_match_all
vt                 noise; one chain of 4 hops ``VAR X = VAR Y``, plus a worked example     string_match_all
cwe                numbered word list; the 10 most common words, plus a worked example     string_match_all
fwe                Zipf-distributed coded words; the 3 most frequent                       string_match_all
=================  ======================================================================  ==============

One deliberate difference: RULER's variable-tracking answer prefix said "assgined" until a 2025 fix; the fixed
text is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NIAH_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
    "assigned the value {query}, they are: "
)

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
    "that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?"
)
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"

FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"


@dataclass(frozen=True)
class TaskSpec:
    """One probe task: its family (which generator), RULER's arguments, the token budget and the metric.

    ``max_new_tokens`` is RULER's ``tokens_to_generate``: generation stops there, and a sample of length L has a
    prompt of at most ``L - max_new_tokens`` tokens (RULER counts the budget inside the length).
    """

    name: str
    family: str  # "niah" | "vt" | "cwe" | "fwe"
    max_new_tokens: int
    metric: str = "string_match_all"  # or "string_match_part" (RULER's QA tasks)
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def haystack(self) -> str | None:
        return self.args.get("type_haystack")


def _niah(name: str, haystack: str, key: str, value: str, k: int = 1, v: int = 1, q: int = 1) -> TaskSpec:
    args = dict(type_haystack=haystack, type_needle_k=key, type_needle_v=value,
                num_needle_k=max(k, q), num_needle_v=v, num_needle_q=q)
    return TaskSpec(name, "niah", 128, args=args)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        _niah("niah_single_1", "noise", "words", "numbers"),
        _niah("niah_single_2", "essay", "words", "numbers"),
        _niah("niah_single_3", "essay", "words", "uuids"),
        _niah("niah_multikey_1", "essay", "words", "numbers", k=4),
        _niah("niah_multikey_2", "needle", "words", "numbers"),
        _niah("niah_multikey_3", "needle", "uuids", "uuids"),
        _niah("niah_multivalue", "essay", "words", "numbers", v=4),
        _niah("niah_multiquery", "essay", "words", "numbers", q=4),
        TaskSpec("vt", "vt", 30, args=dict(type_haystack="noise", num_chains=1, num_hops=4)),
        TaskSpec("cwe", "cwe", 120, args=dict(freq_cw=30, freq_ucw=3, num_cw=10)),
        TaskSpec("fwe", "fwe", 50, args=dict(alpha=2.0, coded_wordlen=6)),
    ]
}


def get_task(name: str) -> TaskSpec:
    """The spec for ``name``; ValueError naming the allowed tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown probe task {name!r}; allowed: {', '.join(TASKS)}") from None


def parse_tasks(text: str | list[str]) -> list[str]:
    """``"niah_single_1,vt"`` / ``"all"`` / ``"niah"`` (every task of a family) -> task names, in TASKS order."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise ValueError(f"no probe task given; allowed: all, niah, {', '.join(TASKS)}")
    names: list[str] = []
    for item in items:
        if item == "all":
            names += list(TASKS)
        elif item == "niah":
            names += [n for n, s in TASKS.items() if s.family == "niah"]
        else:
            names.append(get_task(item).name)
    return list(dict.fromkeys(names))


def parse_length(text: str | int) -> int:
    """``"4k"`` -> 4096, ``"1m"`` -> 1048576, ``"3000"`` -> 3000 (RULER's 4K is 4096 tokens)."""
    if isinstance(text, int):
        value = text
    else:
        raw = text.strip().lower()
        scale = {"k": 1024, "m": 1024 * 1024}.get(raw[-1:], 1)
        number = raw[:-1] if scale > 1 else raw
        try:
            value = int(float(number) * scale)
        except ValueError:
            raise ValueError(f"bad length {text!r}: use tokens like 4096, 4k, 16k or 1m") from None
    if value < 64:
        raise ValueError(f"length {value} is too short for a probe: use at least 64 tokens")
    return value


def parse_lengths(text: str | list) -> list[int]:
    items = [t for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    if not items:
        raise ValueError("no length given: use tokens like 4096, 4k, 16k or 1m")
    return sorted(dict.fromkeys(parse_length(t) for t in items))


def format_length(tokens: int) -> str:
    """4096 -> "4k"; 3000 -> "3000"."""
    for unit, size in (("m", 1024 * 1024), ("k", 1024)):
        if tokens % size == 0:
            return f"{tokens // size}{unit}"
    return str(tokens)
