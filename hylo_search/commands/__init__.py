"""Subcommands of ``hylo-search`` (see :mod:`hylo_search.cli`)."""
