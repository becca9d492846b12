"""``hylo-search``: one console script, subcommands in one table.

Each subcommand lives in ``hylo_search/commands/<name>.py`` (found automatically, listed in :data:`COMMANDS` order
then alphabetically) and exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a function
``(args) -> int``. Registration imports nothing heavy, so ``--help`` is fast.
Exit codes: 0 success, 1 failure while running, 2 bad input (argparse errors and :class:`UsageError`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .errors import UsageError

# The order `hylo-search --help` lists the main workflow in; other command modules follow alphabetically.
COMMANDS = ["study", "library", "sensitivity", "audit", "pareto", "show", "export", "promote", "train", "upcycle",
            "probe", "eval", "list"]


def command_names() -> list[str]:
    from . import commands

    found = {m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")}
    return [c for c in COMMANDS if c in found] + sorted(found - set(COMMANDS))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        print(f"hylo-search {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hylo-search {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
