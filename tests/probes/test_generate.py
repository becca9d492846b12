"""Probe generation: exact lengths in the model's tokens, needle depths, answers recoverable from the prompt,
reproducible seeding, RULER's templates, JSONL round trips and the shipped data files."""

from __future__ import annotations

import json
import re

import pytest

from hylo_search.probes import (
    TASKS,
    Sample,
    count_tokens,
    generate_sample,
    parse_lengths,
    parse_tasks,
    read_jsonl,
    read_samples,
    solve,
    write_jsonl,
    write_samples,
)
from hylo_search.probes import tasks as task_specs
from hylo_search.probes.haystack import compose_essays, essay_words, split_sentences
from tests.probes.helpers import probe_tokenizer

# Lengths per task that this small vocabulary can reach (cwe's 30 repeats need more than 4k of its tokens).
LENGTHS = {name: (1024, 3000) for name in TASKS} | {"cwe": (2048, 8192)}


@pytest.fixture(scope="module")
def tok():
    return probe_tokenizer()


def _unit_tokens(tok, task: str) -> int:
    """Tokens of the largest haystack unit a task adds at a time (the fit's granularity)."""
    family = TASKS[task].family
    if family == "niah" and TASKS[task].haystack == "needle":
        value = "bfc91966-03f8-48ca-b4d0-9ee56d7ab08d" if "uuids" in TASKS[task].args.values() else "1234567"
        return count_tokens(tok, "\n" + task_specs.NIAH_NEEDLE.format(type_needle_v="numbers", key=value, value=value))
    if TASKS[task].haystack == "noise" or family == "vt":
        return count_tokens(tok, "\n" + task_specs.NOISE)
    return 12  # a word of the essay, a word's list entries (cwe), a coded word's repeats (fwe)


@pytest.mark.parametrize("task", list(TASKS))
def test_length_within_one_haystack_unit_and_answer_found_by_search(tok, task):
    for length in LENGTHS[task]:
        for index in range(2):
            s = generate_sample(task, length, index, tok, seed=3)
            tokens = count_tokens(tok, s.prompt) + s.max_new_tokens
            assert s.length == tokens <= length, (task, length)
            assert length - tokens <= _unit_tokens(tok, task) + 1, (task, length, length - tokens)
            assert s.max_new_tokens == TASKS[task].max_new_tokens
            # The oracle: the references come back from the prompt text alone, in the canonical order.
            assert solve(s) == s.outputs
            for ref in s.outputs:
                assert ref in s.input


def test_max_new_tokens_follow_ruler():
    assert {n: s.max_new_tokens for n, s in TASKS.items()} == {
        **{n: 128 for n in TASKS if n.startswith("niah")}, "vt": 30, "cwe": 120, "fwe": 50}
    assert {TASKS[n].haystack for n in ("niah_single_1", "vt")} == {"noise"}
    assert [n for n in TASKS if TASKS[n].haystack == "needle"] == ["niah_multikey_2", "niah_multikey_3"]


@pytest.mark.parametrize("task", ["niah_single_1", "niah_single_2", "niah_multikey_2", "niah_multivalue"])
@pytest.mark.parametrize("depth", [0, 25, 50, 75, 100])
def test_needle_sits_at_requested_depth(tok, task, depth):
    s = generate_sample(task, 3000, 0, tok, depth=depth)
    start = s.input.index("\n") + 1  # the context starts after the instruction line
    end = s.input.rindex("\nWhat ")
    context = s.input[start:end]
    needle_at = min(context.index(f"is: {v}.") for v in s.outputs)
    unit = max(len(task_specs.NOISE), len(task_specs.NIAH_NEEDLE) + 80, 200) + 1  # a line, or an essay sentence
    assert abs(needle_at - depth / 100 * len(context)) <= unit * len(s.depths)  # needles stack at one depth
    assert all(abs(d - depth) <= 100 * unit * len(s.depths) / len(context) for d in s.depths)  # stacked needles
    # The same depth measured in tokens.
    ctx_tokens = count_tokens(tok, context)
    needle_tokens = count_tokens(tok, context[:needle_at])
    assert abs(needle_tokens / ctx_tokens - depth / 100) <= 0.06


def test_random_depths_are_recorded_where_the_needles_are(tok):
    for index in range(4):
        s = generate_sample("niah_multikey_1", 2048, index, tok)
        context = s.input[s.input.index("\n") + 1:s.input.rindex("\nWhat ")]
        found = [round(100 * m.start() / len(context), 2) for m in re.finditer("One of the special", context)]
        assert found == s.depths and len(s.depths) == 4


def test_seeded_per_task_length_index(tok):
    a = generate_sample("niah_single_3", 1024, 5, tok, seed=1)
    assert a == generate_sample("niah_single_3", 1024, 5, tok, seed=1)
    assert a.outputs != generate_sample("niah_single_3", 1024, 6, tok, seed=1).outputs
    assert a.outputs != generate_sample("niah_single_3", 1024, 5, tok, seed=2).outputs
    assert a.outputs != generate_sample("niah_single_3", 2048, 5, tok, seed=1).outputs


def test_ruler_templates_singular_and_plural(tok):
    single = generate_sample("niah_single_1", 1024, 0, tok)
    assert single.input.startswith("A special magic number is hidden within the following text. Make sure to "
                                   "memorize it. I will quiz you about the number afterwards.\n")
    assert "One of the special magic numbers for " in single.input
    assert single.answer_prefix.endswith("mentioned in the provided text is")
    assert single.input.endswith("mentioned in the provided text?")
    multi = generate_sample("niah_multiquery", 1024, 0, tok)
    assert multi.input.startswith("Some special magic numbers are hidden")
    assert multi.answer_prefix.endswith("mentioned in the provided text are") and ", and " in multi.answer_prefix
    assert len(multi.outputs) == 4
    vt = generate_sample("vt", 1024, 0, tok)
    assert vt.answer_prefix.startswith(" Answer: According to the chain(s) of variable assignment")
    assert vt.input.count("Memorize and track the chain(s)") == 2  # the worked example, then the question
    assert len(generate_sample("cwe", 2048, 0, tok).outputs) == 10
    assert len(generate_sample("fwe", 1024, 0, tok).outputs) == 3


def test_too_short_names_the_task(tok):
    with pytest.raises(ValueError, match="task cwe: length 512 is too short"):
        generate_sample("cwe", 512, 0, tok)


def test_jsonl_round_trip_and_ruler_records(tok, tmp_path):
    samples = [generate_sample(t, 1024, i, tok) for t in ("niah_single_1", "vt") for i in range(2)]
    path = write_jsonl(samples, tmp_path / "s.jsonl")
    assert read_jsonl(path) == samples
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert read_samples(tmp_path) == samples
    write_samples(samples, tmp_path / "by_task")
    assert sorted(p.relative_to(tmp_path / "by_task").as_posix() for p in (tmp_path / "by_task").rglob("*")
                  if p.is_file()) == ["niah_single_1/1024.jsonl", "vt/1024.jsonl"]
    # A RULER file: no task field (the folder names it), "index/input/outputs/length/answer_prefix" only.
    ruler = {k: samples[0].to_json()[k] for k in ("index", "input", "outputs", "length", "answer_prefix")}
    folder = tmp_path / "ruler" / "niah_single_1"
    folder.mkdir(parents=True)
    (folder / "validation.jsonl").write_text(json.dumps(ruler) + "\n")
    (read,) = read_jsonl(folder / "validation.jsonl")
    assert (read.task, read.prompt, read.outputs, read.max_new_tokens) == (
        "niah_single_1", samples[0].prompt, samples[0].outputs, 128)
    with pytest.raises(ValueError, match="no 'task' field"):
        Sample.from_json(ruler)


def test_shipped_essay_is_the_generated_one_and_user_files_work(tok, tmp_path):
    from importlib import resources

    shipped = resources.files("hylo_search.probes").joinpath("data", "essays.txt").read_text(encoding="utf-8")
    assert shipped == compose_essays()
    assert len(essay_words()) > 50000
    (tmp_path / "essays.json").write_text(json.dumps({"text": "Alpha beta gamma delta. " * 200}))
    s = generate_sample("niah_single_2", 1024, 0, tok, haystack=str(tmp_path / "essays.json"))
    assert "Alpha beta gamma delta." in s.input and solve(s) == s.outputs


def test_parsing_names_the_allowed_values():
    assert parse_lengths("1k,4k,3000") == [1024, 3000, 4096]
    assert parse_tasks("niah_single_1,vt") == ["niah_single_1", "vt"]
    assert parse_tasks("all") == list(TASKS)
    with pytest.raises(ValueError, match="allowed: .*niah_single_1"):
        parse_tasks("niah_single_9")
    with pytest.raises(ValueError, match="use tokens like 4096, 4k"):
        parse_lengths("4q")


def test_sentence_split():
    assert split_sentences('He left. "Why?" she asked! It was 5 p.m. Then 3 more came') == [
        "He left.", '"Why?" she asked!', "It was 5 p.m.", "Then 3 more came"]
