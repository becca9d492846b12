"""Import transformers' shared model tests (``test_modeling_common.py`` and siblings) from the source distribution
of the installed release, prepared by ``python tests/tools/fetch_transformers_tests.py``.

The files are imported as the package ``transformers_shared_tests`` rooted at the extracted folder
(``$HYLO_TRANSFORMERS_TESTS``, else the fetch script's default). The sdist ships only the top-level
``tests/*.py``; the three sibling modules they import but the sdist lacks are stood in for here:

* ``generation/test_utils.py`` — ``GenerationTesterMixin`` becomes an empty marker class: transformers' generate
  tests are not in the sdist, and HyLo's own generate tests live in ``tests/model/test_hf_api.py``;
* ``exporters/test_export.py`` — ``ExportTesterMixin`` becomes an empty class (its tests drive transformers'
  exporters; ``test_hf_api.py`` exports HyLo with ``torch.export``);
* ``utils/test_configuration_utils.py`` — an empty ``config_common_kwargs`` so that ``ConfigTester`` imports; the
  one check that reads it (``check_config_arguments_init``) is not run.

When the folder is missing the importing test module fails (never skips) with the command that prepares it.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.tools.fetch_transformers_tests import ENV_VAR, tests_folder

PACKAGE = "transformers_shared_tests"


def shared_tests_folder() -> Path:
    return Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else tests_folder()


def _module(name: str, **attributes: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


class GenerationTesterMixin:
    """Stands in for transformers' ``tests/generation/test_utils.GenerationTesterMixin`` (not in the sdist)."""


class ExportTesterMixin:
    """Stands in for transformers' ``tests/exporters/test_export.ExportTesterMixin`` (not in the sdist)."""


def load(module: str) -> types.ModuleType:
    """``transformers_shared_tests.<module>`` (e.g. ``test_modeling_common``) from the prepared folder."""
    folder = shared_tests_folder()
    if not (folder / "test_modeling_common.py").is_file():
        pytest.fail(f"transformers {version('transformers')} shared tests not found in {folder}; prepare them with "
                    "`python tests/tools/fetch_transformers_tests.py`", pytrace=False)
    if PACKAGE not in sys.modules:
        package = _module(PACKAGE, __path__=[str(folder)])
        for sub, attributes in (("generation", {"test_utils": {"GenerationTesterMixin": GenerationTesterMixin}}),
                                ("exporters", {"test_export": {"ExportTesterMixin": ExportTesterMixin}})):
            parent = _module(f"{PACKAGE}.{sub}", __path__=[])
            setattr(package, sub, parent)
            for name, values in attributes.items():
                setattr(parent, name, _module(f"{PACKAGE}.{sub}.{name}", **values))
        _module(f"{PACKAGE}.utils", __path__=[])
        _module(f"{PACKAGE}.utils.test_configuration_utils", config_common_kwargs={})
    return importlib.import_module(f"{PACKAGE}.{module}")
