"""Solve a probe by plain string search over its prompt, with no access to the stored answer.

:func:`solve` is the check that every sample is answerable from its own text (the tests hold
``solve(sample) == sample.outputs`` for every task) and the brain of the tests' oracle model, which must score
100% under both scorers.
"""

from __future__ import annotations

import re
from collections import Counter

from . import tasks as task_specs
from .generate import Sample

_QUESTION = re.compile(r"What (?:is|are all) the special magic \S+ for (.+?) mentioned in the provided text\?")


def _after_last(text: str, marker: str) -> str:
    at = text.rfind(marker)
    return text[at + len(marker):] if at >= 0 else text


def _top(counts: Counter, first_seen: dict[str, int], k: int) -> list[str]:
    return sorted(counts, key=lambda w: (-counts[w], first_seen[w]))[:k]


def solve(sample: Sample) -> list[str]:
    """The references, recovered from ``sample.input`` alone, in the canonical order of ``sample.outputs``."""
    family = task_specs.get_task(sample.task).family
    text = sample.input
    if family == "niah":
        query = _QUESTION.findall(text)[-1]
        keys = [k for part in query.split(", and ") for k in part.split(", ")]
        answers = []
        for key in keys:
            pattern = rf"One of the special magic \S+ for {re.escape(key)} is: (.+?)\.(?=\s|$)"
            answers += re.findall(pattern, text)
        return answers
    if family == "vt":
        value = re.findall(r"assigned the value (\d+) in the text above\.", text)[-1]
        context = _after_last(text, task_specs.VT_TEMPLATE[:40])
        names = re.findall(rf"VAR (\w+) = {value}\b", context)[:1]
        while names and (follow := re.findall(rf"VAR (\w+) = VAR {names[-1]}\b", context)):
            names.append(follow[0])
        return names
    if family == "cwe":
        context = _after_last(text, task_specs.CWE_TEMPLATE[:40]).split("\nQuestion:")[0]
        entries = re.findall(r"\d+\. (\S+)", context)
        first = {w: i for i, w in reversed(list(enumerate(entries)))}
        top = _top(Counter(entries), first, task_specs.get_task(sample.task).args["num_cw"])
        return sorted(top, key=first.__getitem__)
    if family == "fwe":
        context = _after_last(text, "Find the three most frequently appeared coded words. ").split("\nQuestion:")[0]
        words = [w for w in context.split() if w != "..."]
        first = {w: i for i, w in reversed(list(enumerate(words)))}
        return _top(Counter(words), first, 3)
    raise ValueError(f"no solver for task family {family!r}")
