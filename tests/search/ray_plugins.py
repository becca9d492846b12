"""A proxy plug-in for the Ray cluster tests (loaded by Ray workers as ``tests.search.ray_plugins:Class``)."""

from __future__ import annotations

import os
from pathlib import Path

from .plugins import SlowProxy


class MarkedSlowProxy(SlowProxy):
    """:class:`SlowProxy` that first creates ``<options.marks>/<trial>.<node>``, the node named by
    ``$HYLO_TEST_NODE`` (set in each test node's ``ray start`` environment, which its workers inherit), so a test
    can tell where a trial is running and kill that node mid-trial."""

    def __call__(self, ctx):
        (Path(self.config.options["marks"]) / f"{ctx.number}.{os.environ.get('HYLO_TEST_NODE', '?')}").touch()
        return super().__call__(ctx)
