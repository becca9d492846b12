"""Kernel selection shared by every op: pick the fast path per call, fall back loudly, let tests force a path.

Each op asks :func:`use_fast` with the tensors it is about to process. The fast path (fla-core Triton kernels,
mamba-ssm when installed) is taken only when the tensors live on CUDA, the library imports, and no test or
user forced the torch path. When CUDA tensors have to fall back to torch, a warning is emitted once per op.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import threading
import warnings
from typing import Iterator, Literal

import torch

Backend = Literal["auto", "torch", "fast"]

_state = threading.local()
_warned: set[str] = set()


def current() -> Backend:
    return getattr(_state, "backend", "auto")


@contextlib.contextmanager
def force_backend(backend: Backend) -> Iterator[None]:
    """Force every op inside the block onto one path: ``"torch"`` (the CPU reference), ``"fast"``
    (the CUDA kernels; raises if they cannot run) or ``"auto"``."""
    if backend not in ("auto", "torch", "fast"):
        raise ValueError(f"backend must be one of 'auto', 'torch', 'fast', got {backend!r}")
    previous = current()
    _state.backend = backend
    try:
        yield
    finally:
        _state.backend = previous


@contextlib.contextmanager
def launch_light(on: bool = True) -> Iterator[None]:
    """Inside (when ``on``), ops with both a Triton kernel and native PyTorch kernels for the same math (the norms,
    SwiGLU) take the native ones on CUDA, unless the fast path is forced. The model turns it on for a
    decode step run eagerly, which is bound by host time: an fla call adds its autograd wrapper, input guard,
    autotuner lookup and Python launch (about 240 µs per call under cProfile on an H100 host). A captured step or
    a prefill keeps the fused kernels."""
    previous = getattr(_state, "light", False)
    _state.light = on
    try:
        yield
    finally:
        _state.light = previous


def prefers_native() -> bool:
    """Whether an op on CUDA should take its native PyTorch kernel rather than a Triton one
    (:func:`launch_light`)."""
    return getattr(_state, "light", False) and current() != "fast"


@functools.cache
def has_module(name: str) -> bool:
    """True when ``name`` imports (cached: importing fla pulls in triton, which is slow)."""
    try:
        importlib.import_module(name)
    except Exception:  # ImportError, or triton failing to find a driver
        return False
    return True


def use_fast(op: str, tensor: torch.Tensor, module: str) -> bool:
    """Whether ``op`` should run its fast path on ``tensor`` using library ``module`` (e.g. ``"fla.ops"``)."""
    choice = current()
    if choice == "torch" or (choice == "auto" and not tensor.is_cuda):
        return False
    if not tensor.is_cuda:
        raise RuntimeError(f"{op}: the fast path was forced but the tensors are on {tensor.device}, not CUDA")
    if has_module(module):
        return True
    fallback(op, f"`{module}` is not importable", hint="; install the fast kernels with: pip install "
             "'hylo-search[gpu]'", stacklevel=4)
    return False


def fallback(op: str, reason: str, *, hint: str = "", stacklevel: int = 3) -> None:
    """A CUDA call of ``op`` that cannot take its fast path (``reason``: the library does not import, or the inputs
    are in a layout the kernel cannot take): raise if the fast path was forced, else warn once per op and reason,
    and the caller runs the PyTorch path."""
    if current() == "fast":
        raise RuntimeError(f"{op}: the fast path was forced but {reason}{hint}")
    key = f"{op}: {reason}"
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"{op}: {reason}, running the pure-PyTorch path on CUDA (slow){hint}", RuntimeWarning,
                      stacklevel=stacklevel)


@functools.cache
def fla_gated_backward_broken(device: torch.device) -> bool:
    """Whether fla's gated chunk backward (``chunk_bwd_dqkwg``, used by GDN and simple GLA) refuses to run on
    ``device``: fla 0.6 raises on Hopper with 3.4.0 <= triton < 3.7.1, which computes wrong gradients there
    (fla issue #640). Mirrors fla's own check."""
    import triton
    from packaging.version import Version

    hopper = torch.cuda.get_device_capability(device)[0] == 9
    return hopper and Version("3.4.0") <= Version(triton.__version__) < Version("3.7.1")


def backward_fallback(op: str, reason: str) -> None:
    """The fast path cannot give gradients here: raise if it was forced, else warn that autograd runs on the
    PyTorch path (Python's default warning filter shows it once per call site)."""
    if current() == "fast":
        raise RuntimeError(f"{op}: {reason}")
    warnings.warn(f"{op}: {reason}; gradients run on the PyTorch chunked path (slower)", RuntimeWarning, stacklevel=3)
