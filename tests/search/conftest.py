"""Fixtures of the search tests (helpers live in tests/search/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import write_study


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    return write_study(tmp_path)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models here gain nothing from intra-op threads, and the drivers, Ray workers and other test
    processes these tests start share the machine's cores: one thread avoids oversubscription stalls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
