"""Deprecated location of the plug-in API, kept for one release: import from :mod:`hylo_search.scoring`."""

import warnings

from .scoring import (
                      PROBES,
                      PROXIES,
                      Agreement,
                      AssembledProxy,
                      NoProbes,
                      Plugin,
                      ProbeResult,
                      ProxyResult,
                      RecipeProxy,
                      RulerProbes,
                      TrialContext,
                      UpcycleKL,
                      probe_class,
                      proxy_class,
)

__all__ = [
    "PROBES", "PROXIES", "Agreement", "AssembledProxy", "NoProbes", "Plugin", "ProbeResult", "ProxyResult",
    "RecipeProxy", "RulerProbes", "TrialContext", "UpcycleKL", "probe_class", "proxy_class",
]

warnings.warn("hylo_search.objectives is deprecated: import the plug-in API from hylo_search.scoring",
              DeprecationWarning, stacklevel=2)
