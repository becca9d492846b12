"""Documents → packed token rows: streamed, deterministic given the seed, resumable from a small JSON state.

Pipeline: each source yields documents in a fixed order (files sorted; Parquet read one record batch at a time,
JSONL through pyarrow's streaming JSON reader, text line by line, ``datasets`` streamed), so a corpus bigger than
RAM works. A document is held out for evaluation when a hash of (split seed, source, document index) falls below
``eval_fraction`` — the same documents in every epoch and every stage. The split seed is the seed unless given apart
(``Recipe.split_seed``): runs that differ only in the seed then train in another order and are scored on the same
held-out documents. Several sources are interleaved document by document, source *k* drawn with probability ∝
weight from a hash of (seed, k) — of (split seed, k) for the held-out documents — so no RNG state needs saving.
Documents are tokenized one at a time (BOS + text + EOS) and packed into rows of ``seq_len`` tokens.

Shuffling is by blocks: rows are produced until a block holds at least ``shuffle_block`` rows (whole documents),
and the block is permuted by a generator seeded with (seed, block number). The resumable state is the document
position and token carry at the start of the current block plus the rows already emitted from it; resuming
re-reads one block (cheap) and continues bit-exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .recipe import MEMORY_PREFIX, TEXT_EXTENSIONS, DataConfig, SourceConfig

Document = str | list[int]
_MEMORY: dict[str, list[list[int]]] = {}


def register_documents(documents: Any) -> str:
    """Keep token documents (a LongTensor ``[N, T]`` or lists of ids; one document per row) for a source whose
    path is the returned ``memory:<digest>`` key; :func:`release_documents` drops them."""
    rows = documents.tolist() if isinstance(documents, torch.Tensor) else [[int(t) for t in d] for d in documents]
    if not rows:
        raise DataError("in-memory data has no documents")
    key = MEMORY_PREFIX + hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:24]
    _MEMORY[key] = rows
    return key


def release_documents(key: str) -> None:
    _MEMORY.pop(key, None)


class DataError(ValueError):
    """A data source that cannot be read; the message names the source field."""


def unit_hash(*keys: Any) -> float:
    """A deterministic uniform number in [0, 1) from ``keys`` (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def source_files(source: SourceConfig, resolve: Callable[[str], Path], where: str) -> list[tuple[Path, str]]:
    """The files of a ``path`` source with their formats, sorted; raises :class:`DataError` when none match."""
    if source.path.startswith(MEMORY_PREFIX):
        if source.path not in _MEMORY:
            raise DataError(f"{where}.path: in-memory documents {source.path!r} are not registered")
        return [(Path(source.path), "memory")]
    path = resolve(source.path)
    text = str(path)
    if any(ch in text for ch in "*?["):
        anchor = Path(text.split("*")[0].split("?")[0].split("[")[0])
        root = anchor if anchor.is_dir() else anchor.parent
        files = sorted(p for p in root.glob(str(path.relative_to(root))) if p.is_file())
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_EXTENSIONS)
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{where}.path: {text!r} does not exist")
    if not files:
        raise DataError(f"{where}.path: no data files match {text!r} "
                        f"(extensions: {', '.join(sorted(TEXT_EXTENSIONS))})")
    out = []
    for file in files:
        fmt = source.format if source.format != "auto" else TEXT_EXTENSIONS.get(file.suffix.lower())
        if fmt is None:
            raise DataError(f"{where}.format: cannot tell the format of {str(file)!r}; "
                            "set format to parquet, jsonl or text")
        out.append((file, fmt))
    return out


def _field(source: SourceConfig) -> str:
    return source.tokens_field or source.text_field


def _parquet_docs(file: Path, source: SourceConfig, rows: int, start: int) -> Iterator[Document]:
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(file)
    field = _field(source)
    if field not in handle.schema_arrow.names:
        raise DataError(f"{file}: no column {field!r} (columns: {', '.join(handle.schema_arrow.names)}); "
                        "set the source's text_field or tokens_field")
    meta = handle.metadata
    groups, skip = [], start
    for g in range(meta.num_row_groups):  # skip whole row groups from the metadata, without reading them
        n = meta.row_group(g).num_rows
        if not groups and skip >= n:
            skip -= n
        else:
            groups.append(g)
    if not groups:
        return
    for batch in handle.iter_batches(batch_size=rows, row_groups=groups, columns=[field]):
        values = batch.column(0).to_pylist()
        if skip:
            cut = min(skip, len(values))
            values, skip = values[cut:], skip - cut
        yield from values


def _jsonl_docs(file: Path, source: SourceConfig, rows: int, start: int) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.json as pj

    field = _field(source)
    kind = pa.list_(pa.int64()) if source.tokens_field else pa.string()
    reader = pj.open_json(
        file,
        read_options=pj.ReadOptions(block_size=1 << 22),
        parse_options=pj.ParseOptions(explicit_schema=pa.schema([(field, kind)]),
                                      unexpected_field_behavior="ignore"),
    )
    skip = start
    for batch in reader:
        values = batch.column(0).to_pylist()
        if skip:
            cut = min(skip, len(values))
            values, skip = values[cut:], skip - cut
        yield from values


def _text_docs(file: Path, source: SourceConfig, start: int) -> Iterator[Document]:
    def documents() -> Iterator[str]:
        if source.text_split == "file":
            yield file.read_text(encoding="utf-8", errors="replace")
            return
        with open(file, encoding="utf-8", errors="replace") as handle:
            if source.text_split == "line":
                yield from (line.rstrip("\n") for line in handle if line.strip())
                return
            paragraph: list[str] = []
            for line in handle:
                if line.strip():
                    paragraph.append(line)
                elif paragraph:
                    yield "".join(paragraph).rstrip("\n")
                    paragraph = []
            if paragraph:
                yield "".join(paragraph).rstrip("\n")

    return itertools.islice(documents(), start, None)


def _dataset_docs(source: SourceConfig, start: int, where: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{where}.dataset: reading {source.dataset!r} needs the 'datasets' package "
                        "(pip install datasets), or give local files with 'path'") from None
    stream = datasets.load_dataset(source.dataset, source.dataset_config, split=source.split, streaming=True)
    if start:
        stream = stream.skip(start)
    field = _field(source)
    for row in stream:
        yield row[field]


def iter_documents(source: SourceConfig, files: list[tuple[Path, str]] | None, start: int, rows: int,
                   where: str) -> Iterator[Document]:
    """Raw documents of one source from index ``start`` (0 = the first), in a fixed order."""
    if files is None:
        yield from _dataset_docs(source, start, where)
        return
    skip = start
    for file, fmt in files:
        if fmt == "memory":
            yield from itertools.islice(_MEMORY[str(file)], skip, None)
            return
        if fmt == "parquet":
            import pyarrow.parquet as pq

            n = pq.ParquetFile(file).metadata.num_rows
            if skip >= n:
                skip -= n
                continue
            docs = _parquet_docs(file, source, rows, skip)
        elif fmt == "jsonl":
            docs = _jsonl_docs(file, source, rows, 0)
        else:
            docs = _text_docs(file, source, 0)
        if fmt != "parquet" and skip:
            # Only Parquet knows its row count up front; other formats are skipped by reading.
            for _ in itertools.islice(docs, skip):
                skip -= 1
            if skip:
                continue
        skip = 0
        yield from docs


class DocumentStream:
    """Documents of one split (``train`` or ``eval``) from all sources, interleaved by weight.

    ``loop`` restarts an exhausted source (a new epoch of it); without it the stream ends when every source is
    exhausted. ``state_dict()`` is small and JSON-friendly: per-source document positions and epochs, and the
    number of documents drawn. ``split_seed`` (None: ``seed``) fixes which documents are held out and the order
    of the eval split; ``seed`` the order of the train split."""

    def __init__(self, data: DataConfig, resolve: Callable[[str], Path], seed: int, split: str, loop: bool,
                 where: str = "data", split_seed: int | None = None) -> None:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        self.data, self.seed, self.split, self.loop = data, seed, split, loop
        self.split_seed = seed if split_seed is None else split_seed
        self.where = [f"{where}.sources[{i}]" for i in range(len(data.sources))]
        self.files = [source_files(s, resolve, w) if s.path is not None else None
                      for s, w in zip(data.sources, self.where)]
        self.positions = [0] * len(data.sources)
        self.epochs = [0] * len(data.sources)
        self.drawn = 0
        self._iters: list[Iterator[Document] | None] = [None] * len(data.sources)
        self._done: set[int] = set()

    def state_dict(self) -> dict[str, Any]:
        return {"positions": list(self.positions), "epochs": list(self.epochs), "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.positions = list(state["positions"])
        self.epochs = list(state["epochs"])
        self.drawn = int(state["drawn"])
        self._iters = [None] * len(self.positions)
        self._done = set()

    def _held_out(self, source: int, index: int) -> bool:
        return unit_hash(self.split_seed, "held-out", source, index) < self.data.eval_fraction

    def _pick(self) -> int:
        if len(self.positions) == 1:
            return 0
        # The held-out documents come in the split's order: runs that share a split seed score the same first rows.
        u = unit_hash(self.split_seed if self.split == "eval" else self.seed, "mix", self.split, self.drawn)
        live = [i for i in range(len(self.positions)) if i not in self._done]
        weights = [self.data.sources[i].weight for i in live]
        u *= sum(weights)
        for i, w in zip(live, weights):
            if u < w:
                return i
            u -= w
        return live[-1]

    def __iter__(self) -> DocumentStream:
        return self

    def __next__(self) -> Document:
        while len(self._done) < len(self.positions):
            source = self._pick()
            doc = self._next_of(source)
            if doc is not None:
                self.drawn += 1
                return doc
            self._done.add(source)
        raise StopIteration

    def _next_of(self, i: int) -> Document | None:
        source = self.data.sources[i]
        yielded_this_pass = self.positions[i] > 0
        while True:
            if self._iters[i] is None:
                self._iters[i] = iter_documents(source, self.files[i], self.positions[i],
                                                self.data.read_batch_rows, self.where[i])
            for doc in self._iters[i]:
                index = self.positions[i]
                self.positions[i] += 1
                if (self.split == "eval") != self._held_out(i, index):
                    continue
                if isinstance(doc, str) and len(doc) < max(source.min_chars, 1):
                    continue
                return doc
            if self.positions[i] == 0 or (self.loop and not yielded_this_pass):
                raise DataError(f"{self.where[i]}: no documents for the {self.split} split "
                                f"(eval_fraction={self.data.eval_fraction}, min_chars={source.min_chars})")
            if not self.loop:
                return None
            self.epochs[i] += 1
            self.positions[i] = 0
            self._iters[i] = None
            yielded_this_pass = False


class Tokenize:
    """``document -> token ids``: BOS (when the tokenizer has one and ``add_bos``) + text + EOS. Pre-tokenized
    documents (lists of ids) are used as given."""

    def __init__(self, tokenizer: Any | None, add_bos: bool) -> None:
        self.tokenizer = tokenizer
        self.bos = getattr(tokenizer, "bos_token_id", None) if add_bos and tokenizer is not None else None
        self.eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        self.pad = pad if pad is not None else (self.eos if self.eos is not None else 0)

    def __call__(self, doc: Document) -> list[int]:
        if not isinstance(doc, str):
            return [int(t) for t in doc]
        if self.tokenizer is None:
            raise DataError("text documents need a tokenizer; pass the teacher's tokenizer or use tokens_field")
        ids = self.tokenizer(doc, add_special_tokens=False)["input_ids"]
        return ([self.bos] if self.bos is not None else []) + list(ids) + ([self.eos] if self.eos is not None else [])


class Packer:
    """Token ids → rows of exactly ``seq_len`` tokens with the number of real tokens in each."""

    def __init__(self, seq_len: int, packing: str, pad_id: int) -> None:
        self.seq_len, self.packing, self.pad_id = seq_len, packing, pad_id
        self.carry: list[int] = []

    def add(self, tokens: list[int]) -> list[tuple[list[int], int]]:
        T = self.seq_len
        if self.packing == "pad":
            return [(piece + [self.pad_id] * (T - len(piece)), len(piece))
                    for piece in (tokens[i:i + T] for i in range(0, len(tokens), T))]
        self.carry.extend(tokens)
        full = len(self.carry) // T
        rows = [(self.carry[k * T:(k + 1) * T], T) for k in range(full)]
        del self.carry[:full * T]
        return rows


@dataclass
class Rows:
    """``input_ids`` ``[N, T]`` int64 and ``lengths`` ``[N]`` (real tokens; the rest is right padding)."""

    input_ids: torch.Tensor
    lengths: torch.Tensor

    def loss_mask(self) -> torch.Tensor:
        """``[N, T]`` bool: real tokens."""
        return torch.arange(self.input_ids.shape[1])[None, :] < self.lengths[:, None]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> Rows:
        return Rows(self.input_ids[start:stop], self.lengths[start:stop])


class PackedStream:
    """Training rows of one stage, shuffled by blocks; see the module docstring for determinism and resuming."""

    def __init__(self, docs: DocumentStream, tokenize: Tokenize, seq_len: int, seed: int) -> None:
        self.docs, self.tokenize, self.seed = docs, tokenize, seed
        self.packer = Packer(seq_len, docs.data.packing, tokenize.pad)
        self.block_size = docs.data.shuffle_block
        self._block: list[tuple[list[int], int]] = []
        self._block_start: dict[str, Any] | None = None
        self._block_no = 0
        self._emitted = 0

    def state_dict(self) -> dict[str, Any]:
        """Where the current block started and how many of its rows were used (JSON-friendly)."""
        if self._block_start is None:
            return {"block_start": {"docs": self.docs.state_dict(), "carry": list(self.packer.carry),
                                    "block": self._block_no}, "emitted": 0}
        return {"block_start": self._block_start, "emitted": self._emitted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        start = state["block_start"]
        self.docs.load_state_dict(start["docs"])
        self.packer.carry = list(start["carry"])
        self._block_no = int(start["block"])
        self._fill()
        self._emitted = int(state["emitted"])

    def document_state(self) -> dict[str, Any]:
        """The document position after everything read so far (where a following stage continues)."""
        return self.docs.state_dict()

    def _fill(self) -> None:
        self._block_start = {"docs": self.docs.state_dict(), "carry": list(self.packer.carry),
                             "block": self._block_no}
        rows: list[tuple[list[int], int]] = []
        while len(rows) < self.block_size:
            rows.extend(self.packer.add(self.tokenize(next(self.docs))))
        generator = torch.Generator().manual_seed(int(unit_hash(self.seed, "block", self._block_no) * 2**62))
        order = torch.randperm(len(rows), generator=generator).tolist()
        self._block = [rows[i] for i in order]
        self._block_no += 1
        self._emitted = 0

    def next_rows(self, n: int) -> Rows:
        out: list[tuple[list[int], int]] = []
        while len(out) < n:
            if self._block_start is None or self._emitted >= len(self._block):
                self._fill()
            take = min(n - len(out), len(self._block) - self._emitted)
            out.extend(self._block[self._emitted:self._emitted + take])
            self._emitted += take
        return Rows(torch.tensor([r[0] for r in out], dtype=torch.long),
                    torch.tensor([r[1] for r in out], dtype=torch.long))


def eval_rows(docs: DocumentStream, tokenize: Tokenize, seq_len: int, count: int) -> Rows:
    """The first ``count`` packed rows of held-out documents, in order (fewer when the held-out text runs out)."""
    packer = Packer(seq_len, docs.data.packing, tokenize.pad)
    rows: list[tuple[list[int], int]] = []
    for doc in docs:
        rows.extend(packer.add(tokenize(doc)))
        if len(rows) >= count:
            break
    if not rows:
        raise DataError(f"the held-out split holds no complete row of {seq_len} tokens: raise eval_fraction or add "
                        "data")
    rows = rows[:count]
    return Rows(torch.tensor([r[0] for r in rows], dtype=torch.long),
                torch.tensor([r[1] for r in rows], dtype=torch.long))


__all__ = ["DataError", "DocumentStream", "PackedStream", "Packer", "Rows", "Tokenize", "eval_rows", "register_documents",
           "release_documents", "unit_hash"]
