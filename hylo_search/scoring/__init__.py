"""How a trial is scored: the documented plug-in API for user proxies and probes, and the built-in kinds.

A study names a plug-in as ``package.module:Class`` in ``proxy.kind`` or ``probes.kind``. Write it against the names
exported here (pinned by ``tests/search/test_public_api.py``): :class:`Plugin`, :class:`TrialContext`,
:class:`ProxyResult`, :class:`ProbeResult`. See :mod:`.api` for the contract, :mod:`.kinds` for the built-ins.
"""

from .api import Plugin, ProbeResult, ProxyResult, TrialContext, timed
from .kinds import PROBES, PROXIES, probe_class, proxy_class
from .probe_kinds import Agreement, NoProbes, RulerProbes
from .proxy_kinds import AssembledProxy, RecipeProxy, UpcycleKL

__all__ = [
    "PROBES", "PROXIES", "Agreement", "AssembledProxy", "NoProbes", "Plugin", "ProbeResult", "ProxyResult",
    "RecipeProxy", "RulerProbes", "TrialContext", "UpcycleKL", "probe_class", "proxy_class", "timed",
]
