"""Converted layers reused across trials (not the model's KV cache): one safetensors file per (teacher, layer,
token, options, seed, code).

Upcycling an MLA layer costs an SVD per layer, and a study converts the same (layer, mixer, rank) in many layouts.
:meth:`ConvertedLayers.build` upcycles a layout once with the teacher init for the layers it has never seen, stores each
converted mixer's tensors, and builds later layouts whose layers are all cached with ``init="random"`` (no SVD,
only the dense copy) before loading the cached mixers over them.

The key holds the teacher's content fingerprint, the layer index, the token (``L128``, ``G``...), the upcycle
options, the seed, the dtype and :data:`CODE_VERSION` (a digest of the model and upcycling source), so a change to
any of them converts again. One caveat, by design: a Mamba2/GDN layer's randomly initialised parts (gate, dt) come
from the first layout that converted that layer; with parallel workers which layout was first can vary.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import hylo_model
from hylo_model import upcycle
from hylo_model.upcycle import TeacherSource

from ..paths import atomic_path

MODEL_SOURCES = ("config.py", "model.py", "layers", "upcycle", "ops")


def code_version(sources: tuple[str, ...] = MODEL_SOURCES) -> str:
    """A digest of the package version and the named files / folders of :mod:`hylo_model`."""
    root = Path(hylo_model.__file__).parent
    digest = hashlib.sha256(hylo_model.__version__.encode())
    for name in sources:
        path = root / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


CODE_VERSION = code_version()


@torch.no_grad()
def teacher_fingerprint(model: Any) -> str:
    """The teacher's identity, as upcycling records it in a student's provenance."""
    return TeacherSource.from_any(model).fingerprint()


class ConvertedLayers:
    """The converted-layer cache of one study under ``root`` (see the module docstring)."""

    def __init__(self, root: Path, fingerprint: str, options: dict[str, Any], seed: int) -> None:
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.options = dict(options)
        self.seed = seed

    def key(self, layer: int, token: str, dtype: torch.dtype) -> str:
        payload = [self.fingerprint, layer, token, self.options, self.seed, str(dtype), CODE_VERSION]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def build(self, teacher: Any, tokens: list[str]) -> tuple[Any, dict[str, int]]:
        """The upcycled student of ``tokens`` and ``{"layer_cache_hits": h, "layer_cache_misses": m}``."""
        dtype = next(teacher.parameters()).dtype
        keys = {i: self.key(i, token, dtype) for i, token in enumerate(tokens) if token != "A"}
        cached = {i for i, key in keys.items() if self.path(key).is_file()}
        missing = sorted(set(keys) - cached)
        student = upcycle(teacher, ",".join(tokens), seed=self.seed, init="teacher" if missing else "random",
                          **self.options)
        for i in missing:
            save_mixer(student.model.layers[i].mixer, self.path(keys[i]))
        for i in sorted(cached):
            load_mixer(student.model.layers[i].mixer, self.path(keys[i]))
        return student, {"layer_cache_hits": len(cached), "layer_cache_misses": len(missing)}


def save_mixer(mixer: Any, path: Path, metadata: dict[str, str] | None = None) -> None:
    """A mixer's tensors as one safetensors file, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in mixer.state_dict().items()}, str(tmp),
                  metadata=metadata)


def load_mixer(mixer: Any, path: Path) -> None:
    mixer.load_state_dict(load_file(str(path)), strict=True)
