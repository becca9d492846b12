"""``HyLoForCausalLM.generate`` at CUDA-graph speed, through transformers' own decoding loop.

transformers' ``GenerationMixin`` runs the prefill through the model and every later step through the callable
``get_compiled_call`` returns, when ``_valid_auto_compile_criteria`` allows it (for its own models: ``torch.compile``
on a ``StaticCache``). HyLo answers those two hooks with :class:`GenerationGraphs`: the cache is a preallocated
:class:`~hylo_model.cache.HyLoCache` sized for the request, and each decode step replays the captured step of a
:class:`~hylo_model.graphs.GraphDecoder` (on the CPU the same static step runs eagerly). Sampling, logits processors,
stopping criteria and streamers stay transformers'; they see the same logits.

When static steps are used:

* ``cache_implementation="static"``: always (graphs on CUDA, eager static steps elsewhere);
* unset: on CUDA for greedy and sampling, unless ``disable_compile=True`` (the opt-out, transformers' own flag for
  its compiled decode; ``cache_implementation="dynamic"`` also opts out);
* never when a step cannot be static, each reason logged once: a padded batch (``attention_mask`` with zeros),
  beam search (it reorders the cache every step), hidden states or attentions asked for per step. Those steps run
  the ordinary eager forward on the same cache. A CUDA graph that fails to capture is logged and the call goes on
  with eager static steps.

The prefill always runs the ordinary forward on the request's cache, in one piece or, with transformers'
``prefill_chunk_size``, in chunks (the prefill's activations then scale with the chunk, not the prompt); the decode
that follows is the same either way.

Between calls the last internal static cache and its graphs are kept on the model (``release()`` frees them), so a
second request of the same batch size reuses the captured steps instead of capturing again, as transformers keeps its
compiled step. A cache the caller passes in, or one ``return_dict_in_generate`` hands back, is never reused.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from .cache import HyLoCache
from .graphs import GraphDecoder

logger = logging.getLogger(__name__)

# transformers renamed the output field `past_key_values` to `cache` within 5.x.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
# Generation modes whose steps feed one token per sequence and keep the cache's rows in place.
STATIC_MODES = ("greedy_search", "sample")


@dataclass
class _Call:
    """What one ``generate`` call decided about its cache."""

    cache: HyLoCache | None = None
    decoder: GraphDecoder | None = None


class GenerationGraphs:
    """The decode steps of ``model.generate`` (see the module docstring); one per model, made on first use."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._call: _Call | None = None
        self._kept: tuple[HyLoCache, GraphDecoder, int] | None = None  # cache, its decoder, its batch size
        self._weights: list[tuple[int, torch.dtype]] | None = None  # parameter addresses the kept graphs read
        self._logged: set[str] = set()

    def __getstate__(self) -> dict:
        # Graphs and caches do not copy or pickle; a copy of the model starts without them.
        return {"model": self.model, "_call": None, "_kept": None, "_weights": None, "_logged": set()}

    def release(self) -> None:
        """Free the kept static cache and its captured graphs."""
        self._kept = None
        self._weights = None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """One ``generate`` call: its decisions live until it returns."""
        previous, self._call = self._call, _Call()
        if self._weights is not None and self._weights != self._fingerprint():
            self.release()  # parameters were moved or replaced: the captured graphs would read stale memory
        try:
            yield
        finally:
            if self._kept is not None:
                self._weights = self._fingerprint()
            self._call = previous

    # ------------------------------------------------------------------------------------- transformers' hooks
    def static_by_default(self, generation_config: Any, generation_mode: Any = None) -> bool:
        """Whether ``cache_implementation`` unset means a static cache: CUDA, greedy or sampling, not disabled."""
        device = next(self.model.parameters()).device
        return (device.type == "cuda" and _mode(generation_mode) in STATIC_MODES
                and not getattr(generation_config, "disable_compile", False))

    def prepare_cache(self, generation_config: Any, generation_mode: Any, batch_size: int,
                      max_cache_length: int, attention_mask: torch.Tensor | None) -> HyLoCache:
        """The static cache for this call (kept from the last call when it fits), and whether its steps replay."""
        call = self._call if self._call is not None else _Call()
        rows = batch_size * max(getattr(generation_config, "num_beams", 1) or 1,
                                getattr(generation_config, "num_return_sequences", 1) or 1)
        length = max(max_cache_length, getattr(generation_config, "max_cache_len", None) or 0)
        keep = not getattr(generation_config, "return_dict_in_generate", False)
        reason = self._why_eager(generation_config, generation_mode, attention_mask)
        same_rows = keep and self._kept is not None and self._kept[2] == rows
        if same_rows and self._kept[0].max_length >= length:
            cache, decoder, _ = self._kept
            cache.rewind()
        else:
            if same_rows:
                length = max(length, self._kept[0].max_length)  # one size serves both requests: one set of graphs
            if keep:
                self.release()
            cache, decoder = HyLoCache(self.model.config, max_length=length), None
        if reason is None:
            decoder = decoder or GraphDecoder(self.model, cache)
            if keep:
                self._kept = (cache, decoder, rows)
        else:
            self._log(reason)
            decoder = None
        call.cache, call.decoder = cache, decoder
        return cache

    def adopt_cache(self, cache: Any, generation_config: Any, generation_mode: Any,
                    attention_mask: torch.Tensor | None) -> None:
        """A cache the caller passed in: its steps replay when it is preallocated and static steps apply."""
        if self._call is None or not isinstance(cache, HyLoCache) or cache.max_length is None:
            return
        if getattr(generation_config, "disable_compile", False):
            return
        reason = self._why_eager(generation_config, generation_mode, attention_mask)
        if reason is not None:
            self._log(reason)
            return
        self._call.cache, self._call.decoder = cache, GraphDecoder(self.model, cache)

    def uses_steps(self, model_kwargs: dict) -> bool:
        """``_valid_auto_compile_criteria``: whether this call's decode steps go through :meth:`step`."""
        call = self._call
        return call is not None and call.decoder is not None and model_kwargs.get(_CACHE_FIELD) is call.cache

    def step_inputs(self, input_ids: torch.Tensor, next_sequence_length: int | None = None,
                    **kwargs: Any) -> dict | None:
        """``prepare_inputs_for_generation`` for a decode step :meth:`step` replays: the last token and the cache,
        without transformers' generic work (a clone, position slicing, mask building), which runs on the host
        between one token's sync and the next step's launch, while the GPU waits. None when the step is not one
        the call's decoder serves (transformers' own preparation then runs)."""
        cache = kwargs.get(_CACHE_FIELD, kwargs.get("past_key_values"))
        if next_sequence_length != 1 or not self._serves(
                cache, kwargs.get("inputs_embeds"), kwargs.get("attention_mask"),
                kwargs.get("output_hidden_states"), kwargs.get("output_attentions")):
            return None
        return {"input_ids": input_ids[:, -1:], _CACHE_FIELD: cache}

    def step(self, input_ids: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
             attention_mask: torch.Tensor | None = None, output_hidden_states: bool | None = None,
             output_attentions: bool | None = None, **kwargs: Any) -> CausalLMOutputWithPast:
        """One decode step as ``model(**inputs)`` takes it; the call's decoder serves one token per sequence
        (positions come from the cache, which equal transformers' own without padding), the model the rest."""
        call, cache = self._call, kwargs.get(_CACHE_FIELD)
        one_token = input_ids is not None and input_ids.dim() == 2 and input_ids.shape[1] == 1
        if one_token and self._serves(cache, inputs_embeds, attention_mask, output_hidden_states, output_attentions):
            try:
                return CausalLMOutputWithPast(logits=call.decoder.step(input_ids), **{_CACHE_FIELD: cache})
            except RuntimeError as error:  # a capture failing leaves the cache as it was (GraphDecoder._capture)
                if not call.decoder.use_graphs:
                    raise
                self._log(f"capturing the decode step in a CUDA graph failed ({type(error).__name__}: "
                          f"{str(error)[:200]}); decoding with eager static steps")
                call.decoder.use_graphs = False
                return CausalLMOutputWithPast(logits=call.decoder.step(input_ids), **{_CACHE_FIELD: cache})
        # More than one token is a prefill chunk (``prefill_chunk_size``): the prefill always runs the ordinary
        # forward, so only a one-token step that could not be served is worth a log line.
        prefill_chunk = input_ids is not None and input_ids.dim() == 2 and input_ids.shape[1] > 1
        if call is not None and call.decoder is not None and not prefill_chunk:
            self._log("a decode step with embeddings, a mask or per-step outputs ran eagerly")
        return self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                          output_hidden_states=output_hidden_states, output_attentions=output_attentions, **kwargs)

    # ---------------------------------------------------------------------------------------------- internals
    def _serves(self, cache: Any, inputs_embeds: Any, attention_mask: Any, output_hidden_states: Any,
                output_attentions: Any) -> bool:
        """Whether the call's decoder serves a step with these inputs (one token per sequence is the caller's
        check): the call's own cache, token ids without a mask, no per-step outputs."""
        call = self._call
        return (call is not None and call.decoder is not None and cache is call.cache and inputs_embeds is None
                and attention_mask is None and not output_hidden_states and not output_attentions)

    def _why_eager(self, generation_config: Any, generation_mode: Any, attention_mask: torch.Tensor | None) -> str | None:
        if getattr(generation_config, "disable_compile", False):
            return "disable_compile=True"
        mode = _mode(generation_mode)
        if mode not in STATIC_MODES:
            return f"{mode} decoding reorders or rolls back the cache between steps"
        if attention_mask is not None:
            return "the batch is padded (attention_mask has zeros); static steps take unpadded batches"
        if getattr(generation_config, "output_hidden_states", False) or getattr(
                generation_config, "output_attentions", False):
            return "hidden states or attentions are returned per step"
        return None

    def _log(self, reason: str) -> None:
        if reason in self._logged:
            return
        self._logged.add(reason)
        level = logging.INFO if reason == "disable_compile=True" else logging.WARNING
        logger.log(level, "HyLoForCausalLM.generate: decode steps run the eager forward, not static (CUDA-graph) "
                   "steps: %s", reason)

    def _fingerprint(self) -> list[tuple[int, torch.dtype]]:
        return [(p.data_ptr(), p.dtype) for p in self.model.parameters()]


def _mode(generation_mode: Any) -> str:
    return str(getattr(generation_mode, "value", generation_mode))


__all__ = ["GenerationGraphs", "STATIC_MODES"]
