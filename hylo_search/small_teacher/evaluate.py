"""Judging and shipping the small teacher: held-out code perplexity, the probe table, and the shipped folder
(``hylo_search/assets/small_teacher``: config, bf16 safetensors, tokenizer, ``training.json``,
``heldout.safetensors``)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch

from ..tiny_teacher import save


@torch.no_grad()
def heldout_perplexity(model: Any, ids: torch.Tensor, batch_size: int = 4) -> dict[str, float]:
    """``exp`` of the mean next-token cross-entropy over every token of ``ids`` (int [rows, T]) but the first of a
    row. Returns ``{"perplexity", "nll", "tokens"}``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(ids), batch_size):
        rows = ids[start:start + batch_size].long().to(device)
        logits = model(rows).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), rows[:, 1:].flatten(), reduction="sum")
        total, count = total + loss.item(), count + rows[:, 1:].numel()
    return {"perplexity": math.exp(total / count), "nll": total / count, "tokens": count}


def read_heldout(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["input_ids"]


@torch.no_grad()
def probe_table(model: Any, tokenizer: Any, tasks: list[str], lengths: list[int], samples: int,
                seed: int = 0) -> dict[str, Any]:
    """Exact accuracy and mean answer log-likelihood per task and length (fast scorer), on the evaluation's own
    prompts (indices ``0..samples-1``)."""
    from ..probes import run_probes

    result = run_probes(model, tokenizer, tasks=tasks, lengths=lengths, samples=samples, scorer="fast",
                        seed=seed)
    return {"accuracy": result.summary(), "logprob": result.summary("logprob_mean"), "mean": result.mean(),
            "samples": samples, "seed": seed}


def corpus_record(manifest: dict) -> dict[str, Any]:
    """The corpus's identity for training.json: the manifest hash, shard hashes and one hash per package over its
    files' hashes (the full file list stays in the work folder's manifest)."""
    packages = {}
    for name, package in manifest["packages"].items():
        digest = hashlib.sha256("".join(f["path"] + f["sha256"] for f in package["files"]).encode()).hexdigest()
        packages[name] = {"version": package["version"], "split": package["split"], "files": len(package["files"]),
                          "bytes": sum(f["bytes"] for f in package["files"]), "sha256": digest}
    return {"manifest_sha256": manifest["sha256"], "python": manifest["python"], "packages": packages,
            "shards": manifest["shards"]}


def ship(out: Path, work: Path, result: dict, report: dict) -> None:
    """Write the shipped folder into ``out`` atomically: bf16 weights, tokenizer, training.json and the tokenized
    held-out split (:func:`hylo_search.tiny_teacher.save`)."""
    save(result["model"].cpu().to(torch.bfloat16), result["tokenizer"], out, report,
         extra={"heldout.safetensors": work / "heldout.safetensors"})
