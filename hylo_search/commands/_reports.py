"""Opening a study folder for a report (``pareto``, ``show``, ``export``): its manifest may name any database, so
the storage is shown, password hidden, before it is connected to."""

from __future__ import annotations

from typing import Any, TextIO


def open_reported(name: str, storage: str | None, stream: TextIO) -> Any:
    """The :class:`~hylo_search.search.storage.StudyFolder` of ``name``, after one line on ``stream`` naming the
    folder and the storage URL (``stream`` is stderr where stdout must stay machine-readable)."""
    from ..search.storage import Manifest, check_storage_url, find_study_folder, open_study_folder, shown

    folder = find_study_folder(name)
    url = storage or Manifest.read(folder).storage
    check_storage_url(url)
    print(f"study folder {folder}, storage {shown(url)}", file=stream, flush=True)
    return open_study_folder(str(folder), storage)
