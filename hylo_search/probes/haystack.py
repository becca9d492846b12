"""Word lists and haystack text shipped with the package, and the user's own essay files.

* ``data/{nouns,adjectives,verbs}.txt``: wonderwords' lists (MIT, see ``data/LICENSE-wonderwords.txt``), the
  lists RULER draws needle keys (``adjective-noun``) and common words from.
* ``data/essays.txt``: the natural-text haystack of the essay tasks. RULER uses Paul Graham's essays, which
  cannot be redistributed; this text was generated here by :func:`compose_essays` (same seed, byte-identical, a
  test holds it so) and is free to ship. A user can point the essay tasks at their own text instead
  (``haystack=PATH``: plain text, or RULER's ``PaulGrahamEssays.json`` with a ``text`` field).
"""

from __future__ import annotations

import json
import random
import re
from functools import cache
from importlib import resources
from pathlib import Path


def _read(name: str) -> str:
    # Through the package, not "hylo_search.probes.data": data/ is a folder of package data, not a package.
    return resources.files("hylo_search.probes").joinpath("data", name).read_text(encoding="utf-8")


@cache
def word_list(kind: str) -> tuple[str, ...]:
    """``"nouns"``, ``"adjectives"`` or ``"verbs"``, in file order."""
    if kind not in ("nouns", "adjectives", "verbs"):
        raise ValueError(f"unknown word list {kind!r}; allowed: nouns, adjectives, verbs")
    return tuple(w.strip() for w in _read(f"{kind}.txt").splitlines() if w.strip())


@cache
def common_words() -> tuple[str, ...]:
    """RULER's cwe vocabulary: nouns + adjectives + verbs, de-duplicated and sorted (shuffled per sample)."""
    return tuple(sorted(set(word_list("nouns")) | set(word_list("adjectives")) | set(word_list("verbs"))))


@cache
def essay_words(path: str | None = None) -> tuple[str, ...]:
    """The essay haystack as RULER keeps it: all whitespace collapsed, split into words.

    ``path``: None for the shipped text; else a ``.json`` file with a ``text`` field (RULER's
    ``PaulGrahamEssays.json``) or any plain-text file."""
    if path is None:
        text = _read("essays.txt")
    else:
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"haystack file {path} not found")
        raw = file.read_text(encoding="utf-8")
        text = json.loads(raw)["text"] if file.suffix == ".json" else raw
    words = tuple(re.sub(r"\s+", " ", text).strip().split(" "))
    if len(words) < 100:
        raise ValueError(f"haystack text {path} has {len(words)} words; the essay tasks need at least 100")
    return words


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` at ``.``/``!``/``?`` followed by space and a capital or digit.

    RULER uses nltk's punkt here, which needs a downloaded model; on the shipped essay text (and most prose) this
    rule gives the same boundaries. An unfinished last sentence is kept as a sentence."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


# ------------------------------------------------------------------------------------------------- essay text
_PEOPLE = ["founders", "programmers", "writers", "investors", "students", "teachers", "engineers", "designers",
           "scientists", "painters", "doctors", "managers", "hackers", "readers", "customers", "builders",
           "researchers", "critics", "gardeners", "architects", "editors", "musicians", "parents", "judges"]
_THINGS = ["a startup", "an essay", "a city", "a product", "a habit", "a company", "a book", "an idea",
           "a language", "a school", "a tool", "a garden", "a problem", "a question", "a painting", "a map",
           "a rule", "a market", "a house", "a plan", "a friendship", "a library", "a machine", "a recipe"]
_ABSTRACT = ["ambition", "taste", "curiosity", "patience", "money", "hard work", "time", "attention", "luck",
             "discipline", "fashion", "conformity", "wealth", "status", "focus", "courage", "judgment",
             "practice", "honesty", "simplicity", "persistence", "fear", "novelty", "tradition", "talent"]
_VERBS = ["underestimate", "overvalue", "ignore", "notice", "depend on", "care about", "argue about", "forget",
          "learn from", "write about", "talk about", "worry about", "measure", "copy", "avoid", "misjudge",
          "reward", "distrust", "cling to", "rediscover", "explain", "defend", "question", "trade away"]
_ADVERBS = ["at first", "in practice", "most of the time", "in the long run", "surprisingly often",
            "almost always", "for a while", "in the end", "sooner or later", "more than they admit",
            "without noticing", "on purpose", "by accident", "year after year", "when it matters"]
_ADJECTIVES = ["strange", "useful", "obvious", "hard", "surprising", "important", "dangerous", "quiet",
               "valuable", "misleading", "rare", "underrated", "simple", "subtle", "tempting", "fragile"]
_CONNECTORS = ["But", "And yet", "So", "In fact", "Of course", "Still", "Meanwhile", "Even so", "Usually",
               "Often", "Sometimes", "For example", "In other words", "Above all", "Oddly enough"]
_RESULTS = ["do better work", "get lucky more often", "change their minds", "stop too early", "build something new",
            "lose interest", "make the same mistake twice", "find better problems", "ask simpler questions",
            "end up where they started", "see what others miss", "learn faster than expected"]
_TEMPLATES = [
    "{P} {v} {a} {adv}.",
    "{C}, most {p} {v} {a} because {p2} {v2} {a2}.",
    "The {adj} thing about {t} is that {p} {v} {a} {adv}.",
    "If you want to {r}, you have to {v} {a} first.",
    "It is {adj} how often {p} {v} {a}.",
    "When {p} {v} {t}, they usually {r}.",
    "{T} is {adj} not because of {a}, but because of {a2}.",
    "I used to think {p} {v} {a}; now I suspect they {v2} {a2}.",
    "There are two kinds of {p}: those who {v} {a} and those who {v2} it.",
    "Few {p} realize how much {a} depends on {a2}.",
    "One reason is that {p} {v} {t} {adv}.",
    "The best {p} I know {v} {a} {adv}.",
    "Why do so many {p} {v} {a}?",
    "What matters is not {a} but {a2}.",
    "{P} who {v} {a} tend to {r}.",
    "This is as true of {t} as it is of {t2}.",
    "{C}, {t} that nobody cares about can still teach you {a}.",
    "Most of what {p} call {a} is really {a2}.",
    "You can tell a lot about {t} from the way its {p} {v} {a}.",
    "{C}, the {adj} part is that {a} compounds {adv}.",
]


def compose_essays(num_words: int = 60000, seed: int = 20260427) -> str:
    """Essay-like English prose of about ``num_words`` words in paragraphs of 4–9 sentences (deterministic)."""
    rng = random.Random(seed)
    paragraphs: list[str] = []
    count = 0
    while count < num_words:
        sentences = []
        for _ in range(rng.randint(4, 9)):
            p, p2 = rng.sample(_PEOPLE, 2)
            t, t2 = rng.sample(_THINGS, 2)
            a, a2 = rng.sample(_ABSTRACT, 2)
            v, v2 = rng.sample(_VERBS, 2)
            sentence = rng.choice(_TEMPLATES).format(
                P=p.capitalize(), p=p, p2=p2, T=t.capitalize(), t=t, t2=t2, a=a, a2=a2, v=v, v2=v2,
                adv=rng.choice(_ADVERBS), adj=rng.choice(_ADJECTIVES), C=rng.choice(_CONNECTORS),
                r=rng.choice(_RESULTS),
            )
            sentences.append(sentence[0].upper() + sentence[1:])
        paragraph = " ".join(sentences)
        paragraphs.append(paragraph)
        count += len(paragraph.split())
    return "\n\n".join(paragraphs) + "\n"
