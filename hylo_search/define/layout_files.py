"""Layout files: the YAML that ``hylo-search export`` writes and ``promote``/``train``/``upcycle`` read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from hylo_model import Layout

from .errors import UsageError


def read_layout(path: str | os.PathLike) -> Layout:
    """Read ``{layout: {code: ..., layers: [...]}, ...}`` or a bare ``{code: ...}`` mapping."""
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


def write_layout(path: str | os.PathLike, layout: Layout, **metadata: Any) -> Path:
    """Write a layout file atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump({"layout": layout.to_dict(), **metadata}, sort_keys=False))
    os.replace(tmp, path)
    return path
