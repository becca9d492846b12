"""Where shipped definitions live: the one resolver for studies, search spaces and training recipes.

Each kind is looked up, in order, in ``$HYLO_SEARCH_DEFS/<folder>`` (a folder laid out like the repository:
``studies/``, ``search_spaces/``, ``studies/recipes/``), in the source tree beside the packages (checkouts and
editable installs), and in ``<prefix>/share/hylo-search/<folder>`` (where a wheel installs them as data files). The
first folder that holds a name wins.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

ENV = "HYLO_SEARCH_DEFS"
FOLDERS = {"studies": "studies", "search_spaces": "search_spaces", "recipes": "studies/recipes"}


def shipped_dirs(kind: str) -> list[Path]:
    """Existing folders that may hold shipped definitions of ``kind`` (``studies``, ``search_spaces``, ``recipes``),
    in lookup order."""
    if kind not in FOLDERS:
        raise ValueError(f"kind must be one of {', '.join(FOLDERS)}, got {kind!r}")
    folder = FOLDERS[kind]
    candidates = []
    if os.environ.get(ENV):
        candidates.append(Path(os.environ[ENV]) / folder)
    candidates.append(Path(__file__).resolve().parents[1] / folder)
    for prefix in dict.fromkeys((sys.prefix, sysconfig.get_paths()["data"])):
        candidates.append(Path(prefix) / "share" / "hylo-search" / folder)
    return [path for path in dict.fromkeys(candidates) if path.is_dir()]


def shipped_files(kind: str) -> dict[str, Path]:
    """``{name: path}`` of every shipped ``*.yaml`` of ``kind`` (the first folder holding a name wins)."""
    found: dict[str, Path] = {}
    for folder in shipped_dirs(kind):
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))
