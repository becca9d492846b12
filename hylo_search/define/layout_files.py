"""Layout files: the YAML that ``hylo-search export`` writes and ``promote`` / ``train`` / ``upcycle`` read::

    layout: {code: "A,L128,G,G"}      # or a bare code string, or {layers: [...]} as Layout.to_dict writes
    teacher: ...                      # what export adds: teacher, upcycle options, the trial's scores

Writing needs no torch (``export`` answers quickly); reading validates through :class:`hylo_model.Layout`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from ..paths import atomic_write_text


def read_layout(path: str | os.PathLike) -> Any:
    """The :class:`hylo_model.Layout` of ``{layout: {code: ..., layers: [...]}, ...}``, a bare ``{code: ...}``
    mapping or a bare code string."""
    from hylo_model import Layout  # imported here: reading a layout is the first step of commands that build models

    path = Path(path)
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"{path}: cannot read layout file: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("layout"), (dict, str)):
        data = data["layout"]
    try:
        return Layout.parse(data) if isinstance(data, str) else Layout.from_dict(data)
    except ValueError as error:
        raise UsageError(f"{path}: field 'layout': {error}") from None


def write_layout(path: str | os.PathLike, layout: Any, **metadata: Any) -> Path:
    """Write a layout file atomically. ``layout``: a :class:`hylo_model.Layout` or its code string."""
    path = Path(path)
    entry = layout.to_dict() if hasattr(layout, "to_dict") else {"code": str(layout)}
    atomic_write_text(path, yaml.safe_dump({"layout": entry, **metadata}, sort_keys=False))
    return path
