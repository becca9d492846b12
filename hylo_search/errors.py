"""Errors the CLI turns into one clear line and exit code 2 (bad input: nothing was written)."""


class UsageError(Exception):
    """Bad input from the user: a file, field or value that is not allowed. The message names it and the allowed
    values."""
