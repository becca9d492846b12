"""Setting a run up: the accelerator (processes, device, precision, experiment trackers), the teacher, activation
checkpointing, and a content digest of a model for run fingerprints."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from torch import nn

from .checkpoint import quiet_saves
from .recipe import RuntimeConfig


def make_accelerator(runtime: RuntimeConfig | None = None, log_with: list[str] | None = None,
                     logging_dir: str | os.PathLike | None = None) -> Any:
    """An ``accelerate.Accelerator`` for the runtime settings (reads ``accelerate launch``'s / ``torchrun``'s
    environment), logging to the experiment trackers ``log_with`` (accelerate's names, see :func:`trackers`) with
    local logs under ``logging_dir``."""
    from accelerate import Accelerator

    runtime = runtime or RuntimeConfig()
    cuda = torch.cuda.is_available()
    precision = runtime.mixed_precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if not log_with:
        return Accelerator(cpu=not cuda, mixed_precision=precision)
    return Accelerator(cpu=not cuda, mixed_precision=precision, log_with=log_with,
                       project_dir=str(logging_dir) if logging_dir is not None else None)


def trackers(log_with: str | list[str] | None) -> list[str]:
    """The experiment trackers to log to: ``"auto"`` is TensorBoard when it (or tensorboardX) is installed, else
    none; ``"none"`` / None none; otherwise accelerate tracker names (``tensorboard``, ``wandb``, ``mlflow``,
    ``comet_ml``, ``aim``, ``clearml``, ``dvclive``, ...), a comma list or a list. Raises ValueError naming the
    allowed names for an unknown one, or the package to install for one that is not installed."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    names = log_with.split(",") if isinstance(log_with, str) else list(log_with or [])
    names = [n.strip() for n in names if n.strip() and n.strip() != "none"]
    available = {str(t) for t in get_available_trackers()}
    if names == ["auto"]:
        return ["tensorboard"] if "tensorboard" in available else []
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"log_with: unknown tracker {name!r}; allowed: auto, none, "
                             f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
        if name not in available:
            raise ValueError(f"log_with: tracker {name!r} needs its package, which is not installed "
                             f"(pip install {'tensorboard' if name == 'tensorboard' else name})")
    return list(dict.fromkeys(names))


def describe_world(acc: Any) -> str:
    """``training on 2 processes (MULTI_CPU, gloo), device cpu``: what the run found, printed at its start (a
    launcher that silently starts one process shows here)."""
    n = acc.num_processes
    if n == 1:
        where = ""
    else:
        kind = getattr(acc.distributed_type, "value", acc.distributed_type)
        backend = getattr(acc.state, "backend", None)
        where = f" ({kind}, {backend})" if backend else f" ({kind})"
    precision = f", mixed precision {acc.mixed_precision}" if acc.mixed_precision != "no" else ""
    return f"training on {n} process{'es' if n > 1 else ''}{where}, device {acc.device}{precision}"


def load_teacher(teacher: nn.Module | str | os.PathLike, dtype: torch.dtype | None = None) -> tuple[nn.Module, str]:
    """A loaded teacher as is, or a Llama/Qwen directory / hub id loaded with transformers (safetensors only)."""
    if isinstance(teacher, nn.Module):
        return teacher, str(getattr(teacher.config, "_name_or_path", "") or type(teacher).__name__)
    from transformers import AutoModelForCausalLM

    from ..upcycle.source import resolve_local_dir

    directory = resolve_local_dir(teacher)
    with quiet_saves():
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, trust_remote_code=False,
                                                     use_safetensors=True)
    return model, str(teacher)


def teacher_tokenizer(teacher: nn.Module | str | os.PathLike) -> Any:
    """The tokenizer saved with a teacher (its folder or hub id, or a loaded model's ``_name_or_path``), or None."""
    source = teacher if not isinstance(teacher, nn.Module) else getattr(teacher.config, "_name_or_path", "")
    if not source:
        return None
    try:
        from transformers import AutoTokenizer

        from ..upcycle.source import resolve_local_dir

        return AutoTokenizer.from_pretrained(resolve_local_dir(source), trust_remote_code=False)
    except (OSError, ValueError):
        return None


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant, so DDP and frozen inputs work)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24 (the older name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def content_digest(model: nn.Module) -> str:
    """A cheap content digest (sum and abs-sum per tensor) telling models apart in run fingerprints."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().double()
            h.update(f"{name}{tuple(tensor.shape)}".encode())
            h.update(torch.stack([flat.sum(), flat.abs().sum()]).cpu().numpy().tobytes())
    return h.hexdigest()


__all__ = ["content_digest", "describe_world", "enable_checkpointing", "load_teacher", "make_accelerator", "teacher_tokenizer",
           "trackers"]
