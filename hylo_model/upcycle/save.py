"""Save an upcycled student atomically, with the teacher's tokenizer beside it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..model import HyLoForCausalLM


def save_upcycled(student: HyLoForCausalLM, out_dir: str | os.PathLike, tokenizer: Any | None = None) -> Path:
    """Write ``student`` (safetensors + config with provenance) and the tokenizer to ``out_dir``.

    The tokenizer defaults to the teacher's, loaded from the directory recorded in the provenance. Everything is
    written to a temporary sibling folder first and renamed into place, so an interrupted save never leaves a
    half-written checkpoint; an existing ``out_dir`` is replaced only once the new one is complete.
    """
    out = Path(out_dir)
    if tokenizer is None:
        teacher = (student.config.hylo_provenance or {}).get("teacher")
        if teacher and Path(teacher).is_dir():
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(teacher, trust_remote_code=False)
            except (OSError, ValueError):
                tokenizer = None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        student.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
