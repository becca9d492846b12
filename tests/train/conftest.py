"""Fixtures for the training tests: one CPU thread per test (the tiny models are latency-bound, and threads fight
on a shared 2-core machine), the shipped tiny corpus, a tokenizer trained on it in memory, a saved teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "studies" / "recipes" / "data" / "tiny.txt"
LAYOUT = "A,L16,M,G"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tokenizer():
    """A byte-level BPE with 97 tokens (the tiny teacher's vocabulary) trained on the tiny corpus, no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=97, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(CORPUS.read_text().split("\n\n"), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    assert len(wrapped) <= 97
    return wrapped


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, tokenizer):
    """The tiny Llama teacher (tests/helpers.py) saved with the tokenizer, as the CLI reads it."""
    from tests.helpers import tiny_teacher

    path = tmp_path_factory.mktemp("teacher")
    tiny_teacher("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def golden_run(tmp_path_factory, tokenizer):
    """The shipped tiny recipe, in process, on the tiny Llama teacher: the reference every other run of it must
    reproduce bit for bit (resumed, killed and resumed through the CLI)."""
    from hylo_model.train import run_recipe
    from tests.helpers import tiny_teacher

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures start before the module-scoped thread pin
    try:
        out = tmp_path_factory.mktemp("golden") / "run"
        result = run_recipe(tiny_teacher("llama"), LAYOUT, "tiny", out, tokenizer=tokenizer, progress="off")
    finally:
        torch.set_num_threads(threads)
    return out, result


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "final" / "model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def peak_bytes(fn) -> int:
    """Peak bytes of CPU tensor memory allocated while ``fn()`` runs (forward and backward), from the profiler's
    allocation events: the running sum of allocations minus frees, maximised over time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = best = 0
    for _, nbytes in events:
        current += nbytes
        best = max(best, current)
    return best
