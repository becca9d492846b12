"""Fetch transformers' shared model tests for the installed release (an install step, never run by a test).

transformers' source distribution on PyPI ships ``tests/test_modeling_common.py`` and its siblings (not the
per-model or generation tests). This script downloads the sdist of the release installed in this environment with
``pip download --no-deps --no-binary :all:`` and extracts its top-level ``tests/*.py`` into
``<cache>/transformers-<version>/tests``, where ``tests/model/test_transformers_common.py`` reads them (the folder
is also printed). Nothing is copied into the repository; a second run with the files in place does nothing.

    python tests/tools/fetch_transformers_tests.py [--cache .cache/transformers-tests]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".cache" / "transformers-tests"
ENV_VAR = "HYLO_TRANSFORMERS_TESTS"


def tests_folder(cache: Path = DEFAULT_CACHE, release: str | None = None) -> Path:
    """Where the extracted tests of ``release`` (default: the installed transformers) live."""
    return cache / f"transformers-{release or version('transformers')}" / "tests"


def fetch(cache: Path = DEFAULT_CACHE, release: str | None = None) -> Path:
    release = release or version("transformers")
    target = tests_folder(cache, release)
    if (target / "test_modeling_common.py").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"transformers=={release}", "-d", download], check=True)
        (archive,) = Path(download).glob("transformers-*.tar.gz")
        prefix = f"transformers-{release}/tests/"
        staging = Path(download) / "tests"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and m.name.startswith(prefix) and "/" not in m.name[len(prefix):]
                       and m.name.endswith(".py")]
            for member in members:
                member.name = member.name[len(prefix):]
                tar.extract(member, staging, filter="data")
        # The sdist leaves out tests/__init__.py (empty in the repository); test_configuration_common imports it.
        (staging / "__init__.py").touch()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)  # atomic: a half-extracted folder is never seen as ready
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--release", help="transformers version (default: the installed one)")
    args = parser.parse_args()
    print(fetch(args.cache, args.release))
    return 0


if __name__ == "__main__":
    sys.exit(main())
