"""The plug-in API users write against is pinned: these names stay importable from hylo_search.scoring (and, for
one release, from the deprecated hylo_search.objectives)."""

from __future__ import annotations

import importlib
import inspect
import warnings

import pytest

PUBLIC = {"Plugin", "TrialContext", "ProxyResult", "ProbeResult", "PROXIES", "PROBES", "proxy_class", "probe_class",
          "UpcycleKL", "RecipeProxy", "AssembledProxy", "RulerProbes", "Agreement", "NoProbes", "timed"}


def test_scoring_exports_exactly_the_public_names():
    scoring = importlib.import_module("hylo_search.scoring")
    assert set(scoring.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(scoring, name), name


def test_plugin_contract_signatures():
    from hylo_search.scoring import Plugin, ProbeResult, ProxyResult, TrialContext

    assert list(inspect.signature(Plugin.__init__).parameters) == ["self", "config", "study"]
    assert Plugin.declared_metrics.__self__ is Plugin  # a classmethod
    assert [f for f in ProxyResult.__dataclass_fields__] == ["metrics", "model", "losses", "layers", "details"]
    assert [f for f in ProbeResult.__dataclass_fields__] == ["metrics", "table"]
    assert {"runtime", "tokens", "seed", "number"} <= set(TrialContext.__dataclass_fields__)
    assert callable(TrialContext.student) and callable(TrialContext.assembled)


def test_builtin_kinds_are_registered():
    from hylo_search.scoring import PROBES, PROXIES

    assert set(PROXIES) == {"recipe", "upcycle_kl", "assembled"}
    assert set(PROBES) == {"ruler", "agreement", "none"}


def test_deprecated_objectives_module_re_exports_with_a_warning():
    import sys

    sys.modules.pop("hylo_search.objectives", None)
    with pytest.warns(DeprecationWarning, match="hylo_search.scoring"):
        objectives = importlib.import_module("hylo_search.objectives")
    scoring = importlib.import_module("hylo_search.scoring")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PUBLIC - {"timed"}:
            assert getattr(objectives, name) is getattr(scoring, name)
