"""What a training command reads, checked before the teacher is loaded or anything is printed: a missing data file
is one line naming the recipe's field (or ``--data``)."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError


def check_recipe_data(recipe: Any, replaced: bool) -> None:
    """Raise UsageError unless every local ``path`` source of ``recipe`` (a :class:`hylo_model.train.Recipe`)
    matches a data file. ``replaced``: the recipe-level data came from ``--data``."""
    from hylo_model.train.data import DataError, source_files

    for field, data in [("data", recipe.data)] + [(f"stages[{i}].data", s.data) for i, s in enumerate(recipe.stages)]:
        for index, source in enumerate(data.sources if data is not None else []):
            if not source.path:
                continue
            try:
                source_files(source, recipe.resolve_path, f"{field}.sources[{index}]")
            except DataError as error:
                if replaced and field == "data":
                    raise UsageError(f"--data {source.path}: {str(error).split(': ', 1)[-1]}") from None
                raise UsageError(f"{recipe.source}: field {error}") from None
