"""RULER's scoring, exactly: ``postprocess_pred`` then ``string_match_all`` / ``string_match_part``
(``scripts/eval/evaluate.py`` and ``scripts/eval/synthetic/constants.py`` of NVIDIA/RULER).

A reference counts as found when it is a case-insensitive *substring* of the prediction (so ``art`` is found in
``party``, as in RULER). RULER reports ``round(100 * mean, 2)``; these functions return the unrounded fraction
0..1, and tables show percent.
"""

from __future__ import annotations

import re

_NON_PRINTABLE = re.compile(r"[\x00-\x1f]")


def postprocess_pred(prediction: str) -> str:
    """Strip, and turn control characters into newlines (RULER's ``postprocess_pred``)."""
    return _NON_PRINTABLE.sub("\n", prediction.strip()).strip()


def sample_match_all(prediction: str, references: list[str]) -> float:
    """Fraction of ``references`` found in ``prediction``."""
    pred = prediction.lower()
    return sum(1.0 for r in references if r.lower() in pred) / len(references)


def sample_match_part(prediction: str, references: list[str]) -> float:
    """1.0 if any reference is found in ``prediction``."""
    pred = prediction.lower()
    return max(1.0 if r.lower() in pred else 0.0 for r in references)


def string_match_all(preds: list[str], refs: list[list[str]]) -> float:
    """RULER's ``string_match_all`` as a fraction: mean over samples of the fraction of references found."""
    return sum(sample_match_all(p, r) for p, r in zip(preds, refs)) / len(preds)


def string_match_part(preds: list[str], refs: list[list[str]]) -> float:
    """RULER's ``string_match_part`` as a fraction: mean over samples of "any reference found"."""
    return sum(sample_match_part(p, r) for p, r in zip(preds, refs)) / len(preds)


SAMPLE_METRICS = {"string_match_all": sample_match_all, "string_match_part": sample_match_part}


def score_prediction(metric: str, prediction: str, references: list[str]) -> float:
    """One sample's score under ``metric`` after RULER's post-processing."""
    return SAMPLE_METRICS[metric](postprocess_pred(prediction), references)
