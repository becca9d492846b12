"""Token sequences for held-out scoring and probes: ``token_sequences(source, count, length, seed, ...)``.

Sources: ``builtin:random`` (uniform over the vocabulary), ``builtin:teacher_samples`` (sampled from the teacher
at temperature 1 from its BOS token: in-distribution text for a teacher that has no corpus, e.g. a tiny random
one), a local ``.txt`` / ``.jsonl`` (field ``text``) file or a folder of them (tokenised, concatenated, cut into
windows; the held-out windows are taken from the end), or ``hf:DATASET[:CONFIG]`` (streamed with ``datasets``,
which is optional). Every source is deterministic given the seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def token_sequences(source: str, count: int, length: int, seed: int, *, teacher: Any = None,
                    tokenizer: Any = None) -> torch.Tensor:
    """``[count, length]`` int64 token ids on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    vocab = teacher.config.vocab_size if teacher is not None else len(tokenizer)
    if source == "builtin:random":
        return torch.randint(0, vocab, (count, length), generator=generator)
    if source == "builtin:teacher_samples":
        return _teacher_samples(teacher, count, length, seed)
    if tokenizer is None:
        raise RuntimeError(f"data source {source!r} is text: the study needs a tokenizer (the teacher has none)")
    if source.startswith("hf:"):
        texts = _hub_texts(source[3:], count * 4, seed)
    else:
        texts = _local_texts(Path(source).expanduser())
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    windows = len(ids) // length
    if windows < count:
        raise RuntimeError(f"data source {source!r} has {len(ids)} tokens: too few for {count} sequences of "
                           f"{length} tokens")
    tail = torch.tensor(ids[(windows - count) * length: windows * length], dtype=torch.long)
    return tail.view(count, length)


@torch.no_grad()
def _teacher_samples(teacher: Any, count: int, length: int, seed: int) -> torch.Tensor:
    device = next(teacher.parameters()).device
    bos = teacher.config.bos_token_id if teacher.config.bos_token_id is not None else 0
    start = torch.full((count, 1), bos, dtype=torch.long, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        # Every row runs to full length, so padding never happens; a pad id other than BOS only keeps
        # transformers from mistaking the BOS prompt for right-padding.
        pad = next((t for t in (teacher.config.pad_token_id, teacher.config.eos_token_id) if t not in (None, bos)),
                   bos)
        out = teacher.generate(start, attention_mask=torch.ones_like(start), do_sample=True, top_k=0, top_p=1.0,
                               temperature=1.0, max_new_tokens=length - 1, min_new_tokens=length - 1,
                               pad_token_id=pad)
    return out[:, :length].cpu()


def _local_texts(path: Path) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise RuntimeError(f"data source {str(path)!r}: no such file, or a folder without .txt/.jsonl files")
    texts = []
    for file in files:
        if file.suffix == ".jsonl":
            texts += [json.loads(line)["text"] for line in file.read_text().splitlines() if line.strip()]
        else:
            texts.append(file.read_text())
    return texts


def _hub_texts(spec: str, count: int, seed: int) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise RuntimeError(f"data source 'hf:{spec}' needs the datasets package (pip install datasets)") from None
    name, _, config = spec.partition(":")
    stream = datasets.load_dataset(name, config or None, split="train", streaming=True).shuffle(seed=seed)
    return [row["text"] for row, _ in zip(stream, range(count))]
