"""Training the small teacher: tokenizer, model, resumable stage loop, evaluation and the shipped folder.

The work folder (default ``hylo_runs/small_teacher``) holds everything a rerun needs::

    corpus/                    :mod:`.corpus` (built on first use)
    tokenizer/                 the BPE trained on the training split (first run)
    tokens_train.npy           the tokenized training split, int32 [N] (documents joined, BOS first)
    heldout.safetensors        the tokenized held-out split, ``input_ids`` int32 [rows, seq_len]
    checkpoints/step-NNNNNN/   model.safetensors (float32), optimizer.pt, state.json; ``checkpoints/latest``
                               names the newest (written after the folder is complete, so a kill never leaves a
                               half checkpoint as the newest)

Every batch is a pure function of ``(seed, step)`` (:class:`.skills.StepBatches`) and the learning rate of the
step, so ``N/2 + N/2`` steps over two runs give the weights of ``N`` steps in one run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..paths import atomic_write_text
from .corpus import build_corpus, read_documents
from .skills import SkillMix, StepBatches

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3: fixed, so the shipped config.json is known up front
BOS, EOS, PAD = 1, 2, 3


@dataclass
class Size:
    """Model and schedule. ``stages``: ``{name, steps, seq_len, code_rows, skill_rows, skills: {kind: weight}}``."""

    model: dict[str, Any]
    vocab: int
    stages: list[dict[str, Any]]
    lr: float = 2e-3
    warmup: int = 100
    checkpoint_every: int = 200
    heldout_rows: int = 256
    heldout_len: int = 4096
    probe_lengths: list[int] = field(default_factory=lambda: [4096, 16384])
    probe_samples: int = 20
    probe_tasks: list[str] = field(default_factory=lambda: ["niah_single_1", "niah_single_2", "niah_multikey_2", "vt"])
    tokenizer_bytes: int = 40_000_000  # of the training split, for the BPE merges


ARCH = dict(model_type="llama", hidden_size=384, intermediate_size=768, num_hidden_layers=10,
            num_attention_heads=6, num_key_value_heads=2, head_dim=64, max_position_embeddings=32768,
            rms_norm_eps=1e-5, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
SKILL_WEIGHTS = {"copy": 1.0, "kv": 1.0, "needle": 2.0, "vt": 1.0, "ruler": 2.0}
SIZES = {
    # 15.1M parameters (2.4M of them the tied embedding): 30 MB of bf16 safetensors.
    "small": Size(model=ARCH, vocab=6144, stages=[
        dict(name="4k", steps=2400, seq_len=4096, code_rows=12, skill_rows=4, skills=SKILL_WEIGHTS),
        dict(name="16k", steps=400, seq_len=16384, code_rows=2, skill_rows=2, skills=SKILL_WEIGHTS)]),
    # CPU test size: seconds.
    "tiny-smoke": Size(model=dict(ARCH, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=1024),
                       vocab=512, lr=3e-3, warmup=2, checkpoint_every=3, heldout_rows=4, heldout_len=128,
                       probe_lengths=[1000], probe_samples=2,
                       probe_tasks=["niah_single_1"], tokenizer_bytes=300_000, stages=[
                           dict(name="4k", steps=4, seq_len=128, code_rows=2, skill_rows=2, skills=SKILL_WEIGHTS),
                           dict(name="16k", steps=4, seq_len=256, code_rows=1, skill_rows=1,
                                skills=SKILL_WEIGHTS)]),
}


def model_config(size: Size) -> Any:
    from transformers import AutoConfig

    values = dict(size.model)
    return AutoConfig.for_model(values.pop("model_type"), vocab_size=size.vocab, bos_token_id=BOS, eos_token_id=EOS,
                                pad_token_id=PAD, **values)


def train_tokenizer(texts: list[str], vocab: int, out: Path) -> Any:
    """A byte-level BPE (numbers split into chunks of up to three digits, as Llama 3's) trained on ``texts``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d{1,3}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                      pad_token="<pad>", model_max_length=1 << 20)
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.tmp-", dir=out.parent))
    wrapped.save_pretrained(tmp)
    os.replace(tmp, out)
    return wrapped


def prepare(work: Path, size: Size, packages: list[str] | None = None) -> tuple[Any, np.ndarray, dict]:
    """Corpus, tokenizer and token files in ``work`` (each made once); returns ``(tokenizer, train tokens,
    manifest)``."""
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer

    corpus = work / "corpus"
    if not (corpus / "manifest.json").is_file():
        build_corpus(corpus, packages)
    manifest = json.loads((corpus / "manifest.json").read_text())
    if not all(manifest["shards"].values()):
        raise ValueError(f"{corpus}: the corpus needs packages in both splits (held out: {manifest['heldout']})")
    if not (work / "tokenizer" / "tokenizer.json").is_file():
        texts, total = [], 0
        for doc in read_documents(corpus, "train"):
            if total >= size.tokenizer_bytes:
                break
            texts.append(doc["text"])
            total += len(doc["text"])
        train_tokenizer(texts, size.vocab, work / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    if not (work / "tokens_train.npy").is_file():
        ids = _tokenize(tokenizer, read_documents(corpus, "train"))
        with open(work / ".tokens_train.npy.tmp", "wb") as handle:
            np.save(handle, ids)
        os.replace(work / ".tokens_train.npy.tmp", work / "tokens_train.npy")
    if not (work / "heldout.safetensors").is_file():
        ids = _tokenize(tokenizer, read_documents(corpus, "heldout"))
        rows = min(size.heldout_rows, len(ids) // size.heldout_len)
        held = ids[:rows * size.heldout_len].reshape(rows, size.heldout_len)
        save_file({"input_ids": np.ascontiguousarray(held)}, str(work / ".heldout.tmp"),
                  metadata={"corpus_sha256": manifest["sha256"], "split": "heldout"})
        os.replace(work / ".heldout.tmp", work / "heldout.safetensors")
    return tokenizer, np.load(work / "tokens_train.npy", mmap_mode="r"), manifest


def _tokenize(tokenizer: Any, docs: list[dict[str, str]]) -> np.ndarray:
    out = []
    for start in range(0, len(docs), 256):
        out += [i for ids in tokenizer([d["text"] for d in docs[start:start + 256]])["input_ids"] for i in ids]
    return np.asarray(out, dtype=np.int32)


def learning_rate(size: Size, step: int) -> float:
    """Linear warmup, then cosine to 10 % at the last step of the last stage."""
    total = sum(s["steps"] for s in size.stages)
    if step < size.warmup:
        return size.lr * (step + 1) / size.warmup
    progress = (step - size.warmup) / max(1, total - size.warmup)
    return size.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def schedule(size: Size) -> list[dict[str, Any]]:
    end, out = 0, []
    for stage in size.stages:
        end += stage["steps"]
        out.append(dict(stage, end=end))
    return out


def save_checkpoint(work: Path, model: Any, optimizer: Any, state: dict) -> Path:
    from safetensors.torch import save_model

    folder = work / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{state['step']:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=folder))
    save_model(model, str(tmp / "model.safetensors"))  # drops the tied head's duplicate, as transformers does
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    atomic_write_text(folder / "latest", target.name + "\n")
    for old in folder.glob("step-*"):  # the newest is named in `latest`; older ones are no longer needed
        if old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(work: Path, model: Any, optimizer: Any) -> dict | None:
    from safetensors.torch import load_model

    latest = work / "checkpoints" / "latest"
    if not latest.is_file():
        return None
    folder = work / "checkpoints" / latest.read_text().strip()
    load_model(model, str(folder / "model.safetensors"), device=str(next(model.parameters()).device))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return json.loads((folder / "state.json").read_text())


def _loss(model: Any, batch: tuple[torch.Tensor, torch.Tensor], device: str) -> torch.Tensor:
    ids, labels = batch
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        return model(ids.to(device), labels=labels.to(device)).loss


def train(work: Path, size_name: str = "small", *, seed: int = 0, device: str = "cpu", max_minutes: float = 9.0,
          until: int | None = None, workers: int = 0, packages: list[str] | None = None, log=print) -> dict:
    """Train from the newest checkpoint in ``work`` until the last step, ``until`` (a step count, for tests) or
    ``max_minutes`` of wall time, whichever comes first; checkpoint and return the state (``step``, ``done``,
    ``history``)."""
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    size = SIZES[size_name]
    work.mkdir(parents=True, exist_ok=True)
    tokenizer, tokens, manifest = prepare(work, size, packages)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(size), attn_implementation="sdpa").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=size.lr, betas=(0.9, 0.95), weight_decay=0.1)
    state = load_checkpoint(work, model, optimizer) or {
        "step": 0, "seed": seed, "size": size_name, "history": [], "seconds": 0.0,
        "corpus_sha256": manifest["sha256"]}
    if state["seed"] != seed or state["size"] != size_name or state["corpus_sha256"] != manifest["sha256"]:
        raise ValueError(f"{work}: its checkpoint is of seed {state['seed']}, size {state['size']} and another "
                         "corpus; use another --work folder")
    plan = schedule(size)
    total = plan[-1]["end"]
    stop = min(total, until if until is not None else total)
    data = StepBatches(SkillMix(tokenizer, tokens, seed), plan, PAD)
    loader = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(state["step"], stop),
                                         num_workers=workers, prefetch_factor=4 if workers else None)
    model.train()
    step_seconds, last = 0.0, time.perf_counter()
    for batch in loader:
        step = state["step"]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(size, step)
        code, skills = _loss(model, batch["code"], device), _loss(model, batch["skills"], device)
        optimizer.zero_grad(set_to_none=True)
        (code + skills).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state["step"] = step + 1
        now = time.perf_counter()
        step_seconds, last = max(step_seconds * 0.9, now - last), now
        if step % 25 == 0 or step + 1 == stop:
            state["history"].append({"step": step, "stage": data.stage_of(step)["name"],
                                     "lr": learning_rate(size, step), "code_loss": round(code.item(), 4),
                                     "skill_loss": round(skills.item(), 4)})
            if log:
                log(json.dumps(state["history"][-1]))
        out_of_time = now - started + 3 * step_seconds + 30 > max_minutes * 60
        if state["step"] % size.checkpoint_every == 0 or state["step"] == stop or out_of_time:
            state["seconds"] = round(state["seconds"] + now - started, 1)
            started = now
            save_checkpoint(work, model, optimizer, state)
        if out_of_time:
            if log:
                log(f"stopped at step {state['step']} of {total} (time limit); rerun the same command to continue")
            break
    state["done"] = state["step"] >= total
    return dict(state, model=model, tokenizer=tokenizer, manifest=manifest, size=size)
