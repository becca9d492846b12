"""Proxy plug-ins used by the search tests (loaded by the engine as ``tests.search.plugins:Class``)."""

from __future__ import annotations

import time

from hylo_search.scoring import ProxyResult, UpcycleKL


class SlowProxy(UpcycleKL):
    """The stand-in proxy after ``options.sleep`` seconds, so a test can kill the driver mid-trial."""

    def __call__(self, ctx):
        time.sleep(float(self.config.options.get("sleep", 1.0)))
        return super().__call__(ctx)


class FlakyProxy(UpcycleKL):
    """Raises for the layouts in ``options.fail`` (every layout with ``options.fail_all``, with one message),
    returns a NaN KL for those in ``options.nan``."""

    def __call__(self, ctx):
        if self.config.options.get("fail_all"):
            raise RuntimeError("injected failure")
        if ctx.layout in self.config.options.get("fail", []):
            raise RuntimeError(f"injected failure for {ctx.layout}")
        result = super().__call__(ctx)
        if ctx.layout in self.config.options.get("nan", []):
            result = ProxyResult({**result.metrics, "proxy_kl": float("nan")}, result.model)
        return result


class NoisyProxy(UpcycleKL):
    """The stand-in proxy plus a seed-dependent offset (``options.noise`` x a fixed pseudo-random number per seed),
    so replicates with different seeds differ, as a trained proxy's do."""

    def __call__(self, ctx):
        result = super().__call__(ctx)
        offset = float(self.config.options.get("noise", 0.05)) * (((ctx.seed * 2654435761) % 1000) / 1000 - 0.5)
        return ProxyResult({**result.metrics, "proxy_kl": result.metrics["proxy_kl"] + offset}, result.model,
                           losses=result.losses, layers=result.layers)
