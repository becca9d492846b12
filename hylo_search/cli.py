"""``hylo-search``: one console script, subcommands in one table.

Each subcommand lives in ``hylo_search/commands/<name>.py`` (found automatically, listed in :data:`COMMANDS` order
then alphabetically) and exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a function
``(args) -> int``. Registration imports nothing heavy, so ``--help`` is fast.
Exit codes: 0 success, 1 failure while running, 2 bad input (argparse errors and :class:`UsageError`), each one
line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import NoReturn

from .errors import UsageError

# The order `hylo-search --help` lists the main workflow in; other command modules follow alphabetically.
COMMANDS = ["study", "library", "sensitivity", "audit", "compare", "pareto", "show", "export", "promote", "train", "upcycle",
            "probe", "eval", "list"]


def command_names() -> list[str]:
    from . import commands

    found = {m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")}
    return [c for c in COMMANDS if c in found] + sorted(found - set(COMMANDS))


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, as every other bad input is (the usage is one ``--help`` away).
    Subcommand parsers are of this class too (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(message: str) -> str:
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hylo-search",
        description="Upcycle Llama/Qwen checkpoints into hybrid attention/MLA/Mamba2/GDN models and search layouts.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in command_names():
        importlib.import_module(f"hylo_search.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as error:
        print(f"hylo-search {args.command}: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hylo-search {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
