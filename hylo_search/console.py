"""Terminal output: rich renderables as plain text (tables the commands print or return), with no file handle
left open and no markup read from data (a layout, a baseline name or an error message may hold brackets)."""

from __future__ import annotations

import io
from typing import Any

WIDTH = 160


def render_text(*renderables: Any, width: int = WIDTH) -> str:
    """The renderables as the plain text rich would print (strings are printed with markup off), trailing
    newlines removed."""
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    for item in renderables:
        console.print(item, markup=False, highlight=False) if isinstance(item, str) else console.print(item)
    return console.export_text().rstrip("\n")
