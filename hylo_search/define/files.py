"""Shared plumbing for the YAML definitions (search spaces, studies): how a name or a path is resolved (shipped
names through :mod:`hylo_model.shipped`, the one resolver, which recipes use too), and how a validation error becomes
one line that names the file, the field and the allowed values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from hylo_model.shipped import shipped_dirs, shipped_files

from ..errors import UsageError

Model = TypeVar("Model", bound=BaseModel)


def definition_dirs(kind: str) -> list[Path]:
    """Folders that may hold shipped definitions of ``kind`` ("studies" or "search_spaces"), existing ones only."""
    return shipped_dirs(kind)


def shipped_names(kind: str) -> list[str]:
    return list(shipped_files(kind))


def resolve(kind: str, name_or_path: str | os.PathLike) -> Path:
    """A shipped definition by name (``qwen1p7b``) or a YAML file by path; UsageError naming the choices."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    # os.path.isfile, unlike Path.is_file, never raises (a name may be longer than the file system allows).
    if path.suffix in (".yaml", ".yml") or os.sep in text or os.path.isfile(path):
        if not os.path.isfile(path):
            raise UsageError(f"{text}: no such file")
        return path
    shipped = shipped_files(kind)
    if text in shipped:
        return shipped[text]
    label = "study" if kind == "studies" else "search space"
    raise UsageError(f"unknown {label} {text!r}; shipped: {', '.join(shipped) or 'none'} "
                     f"(or give a path to a .yaml file)")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UsageError(f"{path}: cannot read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UsageError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate(model: type[Model], data: dict[str, Any], source: str | Path, context: dict | None = None) -> Model:
    """``model.model_validate(data)`` with the first error turned into one line: ``file: field 'a.b': message``."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as error:
        raise UsageError(format_validation_error(error, source)) from None


def format_validation_error(error: ValidationError, source: str | Path) -> str:
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "required field is missing"
    allowed = (first.get("ctx") or {}).get("expected")
    if allowed and "allowed" not in message:
        message += f"; allowed: {allowed}"
    more = len(error.errors()) - 1
    return f"{source}: field '{loc}': {message}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


class Definition(BaseModel):
    """Base of every YAML definition: frozen, and an unknown key is an error that lists the allowed fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown field {unknown[0]!r}; allowed: {', '.join(cls.model_fields)}")
        return data
