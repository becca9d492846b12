"""Opening a study folder for a report (``pareto``, ``show``, ``export``): its manifest may name any database, so
the storage is shown, password hidden, before it is connected to."""

from __future__ import annotations

from typing import Any, TextIO


def open_reported(name: str, storage: str | None, stream: TextIO) -> Any:
    """The :class:`~hylo_search.search.storage.StudyFolder` of ``name``, after one line on ``stream`` naming the
    folder and the storage URL (``stream`` is stderr where stdout must stay machine-readable)."""
    from ..search.storage import Manifest, find_study_folder, open_study_folder

    folder = find_study_folder(name)
    url = storage or Manifest.read(folder).storage
    print(f"study folder {folder}, storage {shown_url(url)}", file=stream, flush=True)
    return open_study_folder(str(folder), storage)


def shown_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    if url.startswith("journal:"):
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url
