"""Where teacher tensors come from: a loaded transformers model, or safetensors files read one tensor at a time
(so a directory teacher is never held whole in memory beside the student)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedModel

from .families import Family
from .llama import LLAMA
from .qwen import QWEN2, QWEN3

FAMILIES: dict[str, Family] = {t: f for f in (LLAMA, QWEN2, QWEN3) for t in f.model_types}
SUPPORTED = "LlamaForCausalLM (llama), Qwen2ForCausalLM (qwen2), Qwen3ForCausalLM (qwen3)"


def family_for(config: Any) -> Family:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported teacher architecture {model_type!r} "
            f"({', '.join(getattr(config, 'architectures', None) or []) or 'no architectures listed'}); "
            f"supported: {SUPPORTED}"
        )
    return FAMILIES[model_type]


def resolve_local_dir(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub id, fetched (config, safetensors, tokenizer files only)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"teacher {str(path)!r} is a file; give the model's directory or a hub id")
    text = str(name_or_path)
    if path.is_absolute() or text.startswith((".", "~")) or text.count("/") != 1:
        raise ValueError(f"teacher {text!r}: no such directory, and not a hub id of the form 'org/name'")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                text, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]
            )
        )
    except Exception as error:  # offline, unknown repo, gated repo: one clear line
        raise ValueError(f"teacher {text!r}: not a local directory and could not be fetched from the hub "
                         f"({type(error).__name__}: {error})") from None


class TeacherSource:
    """Uniform read access to a teacher's config and tensors, with a cheap content fingerprint."""

    def __init__(self, config: Any, name: str, tensors: dict[str, Any], directory: Path | None = None,
                 model: PreTrainedModel | None = None) -> None:
        self.config = config
        self.family = family_for(config)
        self.name = name
        self.directory = directory
        self.model = model
        self._tensors = tensors  # name -> tensor, or name -> safetensors file path
        self._digests: dict[str, bytes] = {}

    @classmethod
    def from_any(cls, teacher: PreTrainedModel | str | os.PathLike) -> TeacherSource:
        if isinstance(teacher, PreTrainedModel):
            family_for(teacher.config)
            name = getattr(teacher.config, "_name_or_path", "") or type(teacher).__name__
            directory = Path(name) if name and Path(name).is_dir() else None
            return cls(teacher.config, name, dict(teacher.state_dict()), directory, teacher)
        if not isinstance(teacher, (str, os.PathLike)):
            raise TypeError(f"teacher must be a transformers model, a directory or a hub id, not {type(teacher).__name__}")
        directory = resolve_local_dir(teacher)
        config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
        family_for(config)
        index = directory / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            tensors = {name: directory / file for name, file in weight_map.items()}
        else:
            single = directory / "model.safetensors"
            if not single.exists():
                raise ValueError(
                    f"{directory}: no model.safetensors or model.safetensors.index.json; HyLo loads teachers from "
                    "safetensors only (convert .bin checkpoints with transformers' save_pretrained first)"
                )
            from safetensors import safe_open

            with safe_open(single, "pt") as handle:
                tensors = {name: single for name in handle.keys()}
        return cls(config, str(teacher), tensors, directory)

    def names(self) -> list[str]:
        return list(self._tensors)

    def has(self, name: str) -> bool:
        return name in self._tensors

    def get(self, name: str) -> torch.Tensor:
        value = self._tensors.get(name)
        if value is None:
            raise KeyError(f"teacher {self.name!r} has no tensor {name!r}")
        if isinstance(value, Path):
            from safetensors import safe_open

            with safe_open(value, "pt") as handle:
                value = handle.get_tensor(name)
        tensor = value.detach()
        if name not in self._digests:
            self._digests[name] = _tensor_digest(name, tensor)
        return tensor

    def fingerprint(self) -> str:
        """The teacher's identity: sha256 over its config and, per tensor in name order, its name, shape and bytes
        (floating tensors as float32, so a bf16 checkpoint loaded in bf16 or float32 is the same teacher). Exact:
        independent of thread count, device and where it was loaded from, and of the order tensors were read (the
        ones not read yet are read now); a tied LM head is the embedding and is left out."""
        skip = {"lm_head.weight"} if getattr(self.config, "tie_word_embeddings", False) else set()
        for name in self._tensors.keys() - self._digests.keys() - skip:
            self.get(name)
        config = {k: v for k, v in self.config.to_dict().items()
                  if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
        for name in sorted(self._digests.keys() - skip):
            digest.update(self._digests[name])
        return digest.hexdigest()

    @property
    def dtype(self) -> torch.dtype:
        for value in self._tensors.values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.dtype
        configured = getattr(self.config, "dtype", None) or getattr(self.config, "torch_dtype", None)
        if isinstance(configured, str):
            configured = getattr(torch, configured, None)
        return configured if isinstance(configured, torch.dtype) else torch.float32


def _tensor_digest(name: str, tensor: torch.Tensor) -> bytes:
    """sha256 of one tensor's name, shape and bytes (floating point as float32, which bf16/fp16 widen to exactly)."""
    data = tensor.float() if tensor.is_floating_point() else tensor
    raw = data.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    digest = hashlib.sha256(f"{name}:{tuple(tensor.shape)}:".encode())
    digest.update(memoryview(raw))
    return digest.digest()
