"""Save an upcycled student atomically, with the teacher's tokenizer beside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..model import HyLoForCausalLM
from ..saving import new_folder


def save_upcycled(student: HyLoForCausalLM, out_dir: str | os.PathLike, tokenizer: Any | None = None,
                  overwrite: bool = False) -> Path:
    """Write ``student`` (safetensors + config with provenance) and the tokenizer to ``out_dir``.

    The tokenizer defaults to the teacher's, loaded from the directory recorded in the provenance. Everything is
    written to a hidden sibling folder and renamed into place once complete (:func:`hylo_model.saving.new_folder`),
    so an interrupted save never leaves a half-written checkpoint. ``out_dir`` must be new or an empty folder; with
    ``overwrite`` it may also hold a previous upcycled model, which is replaced. Anything else raises
    :class:`hylo_model.saving.OutputPathError` (a ValueError) before anything is written.
    """
    if tokenizer is None:
        teacher = (student.config.hylo_provenance or {}).get("teacher")
        if teacher and Path(teacher).is_dir():
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(teacher, trust_remote_code=False)
            except (OSError, ValueError):
                tokenizer = None
    with new_folder(out_dir, "upcycled", overwrite) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)
