"""The output folder of a training run: atomic checkpoints, resume, metrics, final model.

Layout::

    OUT/run.json                         recipe fingerprint, teacher, layout, original RoPE (checked on rerun)
    OUT/recipe.yaml                      the resolved recipe, for people
    OUT/metrics.jsonl                    one line per optimizer step (and per in-stage evaluation)
    OUT/checkpoints/00-align/step-0000020/   a stage end: model (save_pretrained) + trainer_state.json
    OUT/checkpoints/01-distill/step-0000050/ in a stage: + optimizer.pt, scheduler.pt, rng-<rank>.pt
    OUT/final/                           the trained student + tokenizer (AutoModelForCausalLM loads it)
    OUT/result.json                      per-stage losses and held-out metrics

Every checkpoint and the final model are written to a hidden sibling folder and renamed into place once complete
(:mod:`hylo_model.saving`: a marker file, remote-code files for ``trust_remote_code=True``, normal permissions; only
a folder carrying the same kind's marker is ever replaced), so a run killed at any moment leaves either the previous
checkpoint or the new one, never half of one; rerunning the same command resumes from the newest. Optimizer,
scheduler and RNG states go through ``torch.save`` and come back through ``torch.load(weights_only=True)``; the rest
of the trainer state (step, data position, losses) is JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..saving import check_output, finish_folder, install_folder

STATE_FILE = "trainer_state.json"


class RunMismatchError(ValueError):
    """The output folder holds a different run (another recipe, teacher or layout)."""


@dataclass(frozen=True)
class CheckpointRef:
    path: Path
    stage_index: int
    step: int

    def state(self) -> dict[str, Any]:
        return json.loads((self.path / STATE_FILE).read_text())


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


@contextmanager
def quiet_saves() -> Iterator[None]:
    """No "Writing model shards" / "Loading weights" bars (transformers' own tqdm) around saves and loads."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a ``save_pretrained`` folder (one file or sharded) into ``model`` in place; tied weights stay tied."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [
        "model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{folder}: checkpoint does not match the model (missing {sorted(set(missing) - tied)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]})")


class RunDir:
    """One run's output folder. Only the main process writes; every call is collective (all processes call it)."""

    def __init__(self, out_dir: str | os.PathLike, accelerator: Any) -> None:
        self.root = Path(out_dir)
        self.accelerator = accelerator
        self.main = accelerator.is_main_process

    # Run identity.
    def check(self, fingerprint: str) -> dict[str, Any] | None:
        """The stored run.json when this folder holds the same run, None when the folder is new or empty; raises
        :class:`RunMismatchError` for another run. Writes nothing."""
        meta_file = self.root / "run.json"
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            if meta.get("fingerprint") != fingerprint:
                raise RunMismatchError(
                    f"{self.root} holds another run (recipe {meta.get('recipe')!r}, teacher {meta.get('teacher')!r}, "
                    f"layout {meta.get('layout')!r}); a rerun resumes only with the same recipe, data, teacher and "
                    "layout: choose another output folder or remove this one")
            return meta
        if self.root.exists() and any(p for p in self.root.iterdir() if not p.name.startswith(".")):
            raise RunMismatchError(f"{self.root} exists and is not a training run folder (no run.json); "
                                   "choose a new or empty output folder")
        return None

    def begin(self, meta: dict[str, Any], recipe_yaml: str) -> None:
        if self.main:
            self.root.mkdir(parents=True, exist_ok=True)
            if not (self.root / "run.json").exists():
                _atomic_text(self.root / "recipe.yaml", recipe_yaml)
                _atomic_text(self.root / "run.json", json.dumps(meta, indent=2, sort_keys=True))
        self.accelerator.wait_for_everyone()

    # Checkpoints.
    def stage_folder(self, stage_index: int, stage_name: str) -> Path:
        return self.root / "checkpoints" / f"{stage_index:02d}-{stage_name}"

    def checkpoints(self) -> list[CheckpointRef]:
        refs = []
        for folder in (self.root / "checkpoints").glob("*-*/step-*"):
            if folder.parent.name.startswith(".") or not (folder / STATE_FILE).exists():
                continue
            refs.append(CheckpointRef(folder, int(folder.parent.name.split("-", 1)[0]),
                                      int(folder.name.removeprefix("step-"))))
        return sorted(refs, key=lambda r: (r.stage_index, r.step))

    def latest(self) -> CheckpointRef | None:
        refs = self.checkpoints()
        return refs[-1] if refs else None

    def save(self, stage_index: int, stage_name: str, step: int, model: torch.nn.Module, state: dict[str, Any],
             optimizer: Any = None, scheduler: Any = None) -> Path:
        """Write a checkpoint atomically. With ``optimizer``/``scheduler`` (a mid-stage checkpoint) their states
        and every process's RNG state are kept; a stage end keeps the model and trainer state only."""
        final = self.stage_folder(stage_index, stage_name) / f"step-{step:07d}"
        tmp = final.with_name(f".tmp-{final.name}")
        # Every process checks (nothing written yet), so all raise together and none waits at a barrier.
        check_output(final, "checkpoint", overwrite=True)
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            with quiet_saves():
                model.save_pretrained(tmp, safe_serialization=True)
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / STATE_FILE).write_text(json.dumps(state))
        self.accelerator.wait_for_everyone()
        if optimizer is not None:
            torch.save(rng_state(), tmp / f"rng-{self.accelerator.process_index}.pt")
        self.accelerator.wait_for_everyone()
        if self.main:
            finish_folder(tmp, "checkpoint")
            install_folder(tmp, final, "checkpoint", overwrite=True)
        self.accelerator.wait_for_everyone()
        return final

    def restore(self, ref: CheckpointRef, optimizer: Any, scheduler: Any) -> None:
        """Optimizer, scheduler and this process's RNG state of a mid-stage checkpoint."""
        optimizer.load_state_dict(torch.load(ref.path / "optimizer.pt", weights_only=True, map_location="cpu"))
        scheduler.load_state_dict(torch.load(ref.path / "scheduler.pt", weights_only=True))
        rng_file = ref.path / f"rng-{self.accelerator.process_index}.pt"
        if rng_file.exists():  # absent when resuming with more processes than the run had
            set_rng_state(torch.load(rng_file, weights_only=True))

    def prune(self, keep: int) -> None:
        """Keep every stage end (they are the stages' outputs) and the newest ``keep`` mid-stage checkpoints newer
        than the last stage end; a run resumes only from the newest checkpoint, so the rest is dead weight."""
        if self.main:
            refs = self.checkpoints()
            done = [r for r in refs if r.state().get("stage_done")]
            floor = (done[-1].stage_index, done[-1].step) if done else (-1, -1)
            live = [r for r in refs if not r.state().get("stage_done")]
            fresh = [r for r in live if (r.stage_index, r.step) > floor][-keep:]
            for ref in live:
                if ref not in fresh:
                    shutil.rmtree(ref.path, ignore_errors=True)
            # Left by a run killed mid-save: unfinished folders, and previous checkpoints renamed aside.
            stages = self.root / "checkpoints"
            for tmp in [*stages.glob("*/.tmp-*"), *stages.glob("*/.step-*.old-*")]:
                shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    # Metrics, final model, result.
    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.main:
            with open(self.root / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def truncate_metrics(self, stage_index: int, step: int) -> None:
        """Drop metric lines written after the checkpoint a resumed run starts from."""
        path = self.root / "metrics.jsonl"
        if self.main and path.exists():
            keep = [line for line in path.read_text().splitlines()
                    if line.strip() and (json.loads(line)["stage_index"], json.loads(line)["step"]) <= (stage_index, step)]
            _atomic_text(path, "".join(line + "\n" for line in keep))
        self.accelerator.wait_for_everyone()

    def write_final(self, model: torch.nn.Module, tokenizer: Any, result: dict[str, Any]) -> Path:
        final = self.root / "final"
        # Only a previous final model of this run is replaced (a rerun killed before result.json was written).
        check_output(final, "final", overwrite=True)
        if self.main:
            tmp = self.root / ".tmp-final"
            shutil.rmtree(tmp, ignore_errors=True)
            with quiet_saves():
                model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            finish_folder(tmp, "final")
            install_folder(tmp, final, "final", overwrite=True)
            _atomic_text(self.root / "result.json", json.dumps(result, indent=2))
        self.accelerator.wait_for_everyone()
        return final

    def result(self) -> dict[str, Any] | None:
        path = self.root / "result.json"
        return json.loads(path.read_text()) if path.exists() and (self.root / "final").is_dir() else None


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


__all__ = ["CheckpointRef", "RunDir", "RunMismatchError", "load_weights", "rng_state", "set_rng_state"]
