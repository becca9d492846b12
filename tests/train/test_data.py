"""Data: the same documents from text / JSONL / Parquet, exact packing, a stable held-out split, determinism, and
a stream that resumes bit-exactly from its small state."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hylo_model.train.data import (
    DataError,
    DocumentStream,
    PackedStream,
    Packer,
    Tokenize,
    eval_rows,
    iter_documents,
    register_documents,
    release_documents,
    source_files,
)
from hylo_model.train.recipe import DataConfig
from tests.train.conftest import CORPUS

PARAGRAPHS = CORPUS.read_text().strip().split("\n\n")


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    """The tiny corpus as text, JSONL (with an extra field) and Parquet with 7 row groups."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "c.txt").write_text(CORPUS.read_text())
    with open(folder / "c.jsonl", "w") as handle:
        for i, text in enumerate(PARAGRAPHS):
            handle.write(json.dumps({"id": i, "text": text}) + "\n")
    pq.write_table(pa.table({"text": PARAGRAPHS, "n": list(range(len(PARAGRAPHS)))}), folder / "c.parquet",
                   row_group_size=7)
    return folder


def _data(path, **options) -> DataConfig:
    return DataConfig(sources=[{"path": str(path), **options.pop("source", {})}], **options)


def _docs(data, split="train", seed=0, loop=False):
    return DocumentStream(data, Path, seed, split, loop=loop)


@pytest.mark.parametrize("name", ["c.txt", "c.jsonl", "c.parquet"])
def test_every_format_gives_the_same_documents(corpus_files, name):
    data = _data(corpus_files / name, read_batch_rows=5, eval_fraction=0.2)
    train, held = list(_docs(data, "train")), list(_docs(data, "eval"))
    assert sorted(train + held) == sorted(PARAGRAPHS)
    assert not set(train) & set(held) and 3 <= len(held) <= 20
    reference = _data(corpus_files / "c.txt", eval_fraction=0.2)
    assert train == list(_docs(reference, "train")) and held == list(_docs(reference, "eval"))


def test_parquet_and_jsonl_are_read_in_record_batches(corpus_files, monkeypatch):
    """A corpus larger than memory works: nothing reads a whole file at once."""
    import pyarrow.json as pj

    def forbidden(*_a, **_k):
        raise AssertionError("whole-file read")

    monkeypatch.setattr(pq.ParquetFile, "read", forbidden)
    monkeypatch.setattr(pq, "read_table", forbidden)
    monkeypatch.setattr(pj, "read_json", forbidden)
    for name in ("c.parquet", "c.jsonl"):
        data = _data(corpus_files / name, read_batch_rows=3)
        assert len(list(_docs(data, "train"))) + len(list(_docs(data, "eval"))) == len(PARAGRAPHS)


@pytest.mark.parametrize("name", ["c.txt", "c.jsonl", "c.parquet"])
@pytest.mark.parametrize("start", [0, 1, 6, 7, 8, 20, 49, 50, 60])
def test_starting_at_a_document_index_skips_exactly(corpus_files, name, start):
    data = _data(corpus_files / name, read_batch_rows=4)
    files = source_files(data.sources[0], Path, "data.sources[0]")
    assert list(iter_documents(data.sources[0], files, start, 4, "x")) == PARAGRAPHS[start:]


def test_concat_packing_is_the_exact_token_stream(tokenizer):
    tokenize = Tokenize(tokenizer, add_bos=True)
    packer = Packer(16, "concat", tokenize.pad)
    stream, rows = [], []
    for doc in PARAGRAPHS[:6]:
        ids = tokenize(doc)
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert ids[1:-1] == tokenizer(doc, add_special_tokens=False).input_ids
        stream += ids
        rows += packer.add(ids)
    assert all(len(r) == 16 and n == 16 for r, n in rows)
    assert [t for r, _ in rows for t in r] + packer.carry == stream


def test_pad_packing_starts_every_document_on_a_new_row(tokenizer):
    tokenize = Tokenize(tokenizer, add_bos=False)
    packer = Packer(64, "pad", tokenize.pad)
    for doc in PARAGRAPHS[:5]:
        ids = tokenize(doc)
        rows = packer.add(ids)
        assert [t for r, n in rows for t in r[:n]] == ids
        assert all(r[n:] == [tokenize.pad] * (64 - n) for r, n in rows) and packer.carry == []


def test_held_out_split_does_not_depend_on_the_stage_or_epoch(corpus_files):
    data = _data(corpus_files / "c.txt", eval_fraction=0.2)
    held = set(_docs(data, "eval", seed=0))
    looping = _docs(data, "train", seed=0, loop=True)
    seen = [next(looping) for _ in range(3 * len(PARAGRAPHS))]  # three epochs
    assert not held & set(seen) and looping.epochs[0] >= 2
    assert set(_docs(data, "eval", seed=1)) != held  # the seed chooses the split


def test_split_seed_keeps_the_held_out_documents_and_the_seed_changes_the_order(corpus_files):
    """A search's replicates: seeds 0 and 1 under one split seed hold out the same documents, read in the same order
    (eval rows are the first held-out ones), and train on the same others interleaved in another order (two
    sources); the default split seed is the seed."""
    data = DataConfig(sources=[{"path": str(corpus_files / "c.txt")}, {"path": str(corpus_files / "c.jsonl")}],
                      eval_fraction=0.2)
    streams = [DocumentStream(data, Path, seed, "eval", loop=False, split_seed=7) for seed in (0, 1)]
    held = [list(s) for s in streams]
    assert held[0] == held[1] == list(DocumentStream(data, Path, 7, "eval", loop=False))
    assert held[0] != list(DocumentStream(data, Path, 0, "eval", loop=False))
    train = [list(DocumentStream(data, Path, seed, "train", loop=False, split_seed=7)) for seed in (0, 1)]
    assert sorted(train[0]) == sorted(train[1]) and train[0] != train[1]


def _stream(data, tokenizer, seed=0, seq_len=24):
    docs = DocumentStream(data, Path, 0, "train", loop=True)
    return PackedStream(docs, Tokenize(tokenizer, True), seq_len, seed)


def test_stream_is_deterministic_given_the_seed(corpus_files, tokenizer):
    data = _data(corpus_files / "c.parquet", shuffle_block=6)
    a = [_stream(data, tokenizer).next_rows(5).input_ids for _ in range(1)]
    b = [_stream(data, tokenizer).next_rows(5).input_ids for _ in range(1)]
    c = [_stream(data, tokenizer, seed=1).next_rows(5).input_ids for _ in range(1)]
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize("packing", ["concat", "pad"])
def test_stream_resumes_bit_exactly_from_its_state(corpus_files, tokenizer, packing):
    data = _data(corpus_files / "c.jsonl", shuffle_block=5, packing=packing)
    reference = _stream(data, tokenizer)
    want = [reference.next_rows(3) for _ in range(30)]  # several blocks, several epochs
    for cut in (0, 1, 2, 7, 13, 29):
        stream = _stream(data, tokenizer)
        for _ in range(cut):
            stream.next_rows(3)
        state = json.loads(json.dumps(stream.state_dict()))  # the state is plain JSON
        resumed = _stream(data, tokenizer)
        resumed.load_state_dict(state)
        for k in range(cut, 30):
            got = resumed.next_rows(3)
            assert torch.equal(got.input_ids, want[k].input_ids) and torch.equal(got.lengths, want[k].lengths)


def test_weighted_sources_interleave_in_proportion(corpus_files):
    data = DataConfig(sources=[{"path": str(corpus_files / "c.txt"), "weight": 3.0},
                               {"path": str(corpus_files / "c.jsonl"), "weight": 1.0}], eval_fraction=0.1)
    stream = _docs(data, "train", loop=True)
    for _ in range(400):
        next(stream)
    consumed = [e * len(PARAGRAPHS) + p for e, p in zip(stream.epochs, stream.positions)]
    assert 0.68 < consumed[0] / sum(consumed) < 0.82
    again = _docs(data, "train", loop=True)
    assert [next(again) for _ in range(400)] and again.state_dict() == stream.state_dict()


def test_in_memory_token_documents():
    docs = torch.arange(3 * 40).view(3, 40) % 90 + 3
    key = register_documents(docs)
    try:
        data = DataConfig(sources=[{"path": key, "tokens_field": "tokens"}], eval_fraction=0.34, shuffle_block=1)
        every = list(_docs(data, "train")) + list(_docs(data, "eval"))
        assert sorted(map(tuple, every)) == sorted(map(tuple, docs.tolist()))
        rows = eval_rows(_docs(data, "eval"), Tokenize(None, True), 20, 4)
        assert rows.input_ids.shape[1] == 20
    finally:
        release_documents(key)


def test_errors_name_the_source(corpus_files, tmp_path):
    with pytest.raises(DataError, match=r"data\.sources\[0\]\.path: .*does not exist"):
        DocumentStream(_data(tmp_path / "missing.txt"), Path, 0, "train", loop=True)
    with pytest.raises(DataError, match=r"no column 'body' \(columns: text, n\)"):
        list(_docs(_data(corpus_files / "c.parquet", source={"text_field": "body"})))
    (tmp_path / "one.txt").write_text("a single short document")
    with pytest.raises(DataError, match=r"no documents for the train split"):
        next(_docs(_data(tmp_path / "one.txt", eval_fraction=0.5, source={"min_chars": 1000}), loop=True))
    with pytest.raises(DataError, match="need a tokenizer"):
        Tokenize(None, True)("text")
