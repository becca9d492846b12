"""The HyLo hybrid decoder: blocks, model and causal LM, in one file.

Each block is ``x + mixer(norm(x))`` then ``x + mlp(norm(x))`` (Llama/Qwen pre-norm), and the mixer class comes
from :data:`hylo_model.layers.MIXER_CLASSES` by the layer's type in the layout.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .cache import HyLoCache, cache_bytes
from .config import HyLoConfig
from .generation import GenerationGraphs
from .layers import MIXER_CLASSES, GatedDeltaNet, Mamba2
from .layers.common import AttentionMask, RMSNorm, RopeFrequencies, decay_init
from .layers.mla import mla_rope_frequencies
from .layers.packed import PackedLinears
from .ops import backend
from .ops.activation import swiglu
from .ops.norm import add_rms_norm

# The output field that holds the cache: transformers renamed `past_key_values` to `cache` within 5.x.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


class MLP(nn.Module):
    """SwiGLU MLP with Llama/Qwen names (``gate_proj``, ``up_proj``, ``down_proj``). Without gradients the gate
    and up projections run as one GEMM (:class:`~hylo_model.layers.packed.PackedLinears`); with SiLU the
    activation and the product are one fused kernel on CUDA (:func:`~hylo_model.ops.activation.swiglu`)."""

    def __init__(self, config: HyLoConfig) -> None:
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]
        self._silu = config.hidden_act in ("silu", "swish")
        self._gate_up = PackedLinears([self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self._gate_up(x)
        return self.down_proj(swiglu(gate, up) if self._silu else self.act_fn(gate) * up)


class HyLoDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: HyLoConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.mixer_type = config.layer_mixers[layer_idx]
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mixer = MIXER_CLASSES[self.mixer_type](config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, hidden_states: torch.Tensor, **mixer_kwargs: Any) -> torch.Tensor:
        residual, update = self.forward_unreduced(hidden_states, None, **mixer_kwargs)
        return residual + update

    def forward_unreduced(self, hidden_states: torch.Tensor, update: torch.Tensor | None,
                          **mixer_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The block on ``hidden_states + update`` (``update`` None: on ``hidden_states``), its output left as the
        pair ``(residual, update)`` whose sum it is: each residual add is fused with the norm after it (one kernel
        on CUDA, :func:`~hylo_model.ops.norm.add_rms_norm`), the last one with the next block's or the final norm
        (:meth:`HyLoModel.forward` chains blocks so when no gradient is needed)."""
        norm = self.input_layernorm
        if update is None:
            normed = norm(hidden_states)
        else:
            normed, hidden_states = add_rms_norm(update, hidden_states, norm.weight, norm.variance_epsilon)
        mixed = self.mixer(normed, **mixer_kwargs)
        norm = self.post_attention_layernorm
        normed, hidden_states = add_rms_norm(mixed, hidden_states, norm.weight, norm.variance_epsilon)
        return hidden_states, self.mlp(normed)


class HyLoPreTrainedModel(PreTrainedModel):
    config_class = HyLoConfig
    config: HyLoConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HyLoDecoderLayer"]
    _supports_sdpa = True
    _is_stateful = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.Conv1d):
            bound = 1.0 / math.sqrt(module.weight.shape[-1])
            init.uniform_(module.weight, -bound, bound)
        if isinstance(module, (Mamba2, GatedDeltaNet)):
            a_log, dt_bias = decay_init(module.A_log.shape[0], 1.0 if isinstance(module, Mamba2) else 0.0,
                                        like=module.A_log)
            init.copy_(module.A_log, a_log)
            init.copy_(module.dt_bias, dt_bias)
        if isinstance(module, Mamba2):
            init.ones_(module.D)


class HyLoModel(HyLoPreTrainedModel):
    def __init__(self, config: HyLoConfig) -> None:
        super().__init__(config)
        self.padding_idx = getattr(config, "pad_token_id", None)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(HyLoDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rope = RopeFrequencies.of(config)
        self.gradient_checkpointing = False
        self.post_init()

    def mixer_forward(self, layer_idx: int, hidden_states: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Layer ``layer_idx``'s mixer on ``hidden_states`` ``[B, T, hidden]`` entering that layer (positions
        0..T-1, no cache): ``mixer(input_layernorm(h))``, what layer-wise alignment compares with the teacher."""
        layer = self.layers[layer_idx]
        positions = torch.arange(hidden_states.shape[1], device=hidden_states.device)[None]
        return layer.mixer(layer.input_layernorm(hidden_states),
                           position_embeddings=self.rope.cos_sin(positions, hidden_states.dtype),
                           position_ids=positions, attention_mask=AttentionMask(attention_mask), cache=None)

    def _chain_blocks(self) -> bool:
        """Whether the blocks may run chained (:meth:`HyLoDecoderLayer.forward_unreduced`): no gradient, and no
        hook that expects each block's output or the final norm's input."""
        if torch.is_grad_enabled() or nn.modules.module._global_forward_hooks \
                or nn.modules.module._global_forward_pre_hooks:
            return False
        modules = (*self.layers, self.norm)
        return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)

    def refresh_rope(self) -> None:
        """Re-derive every RoPE table (attention's and each MLA layer's) from ``config.rope_parameters``, after a
        long-context stage changed them in place."""
        self.rope = RopeFrequencies.of(self.config)
        for index, layer in enumerate(self.layers):
            if layer.mixer_type == "mla":
                layer.mixer.rope = mla_rope_frequencies(self.config, index)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: HyLoCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: HyLoCache | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        """``input_ids`` ``[B, T]`` (or ``inputs_embeds`` ``[B, T, hidden]``) -> ``last_hidden_state``
        ``[B, T, hidden]``. ``attention_mask`` ``[B, past + T]`` (1 = real token); the cache goes in as ``cache=``
        or ``past_key_values=`` (the name older 5.x releases' ``generate`` uses) and comes back in the
        output field of the installed release's name (:data:`CACHE_FIELD`).

        ``output_attentions`` returns the weights ``[B, H, T, past + T]`` of the attention and MLA layers, one entry
        per such layer in layer order; Mamba2 and GDN layers have no attention matrix and add no entry (as
        transformers' hybrids do). ``config._attn_implementation == "eager"`` computes attention the same
        materialised way without returning it. ``return_dict=False`` returns the output's non-None fields as a
        tuple."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, HyLoCache):
            raise TypeError(f"cache must be a HyLoCache (got {type(cache).__name__}); build one with model.new_cache()")
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = HyLoCache(self.config)
        if not use_cache:
            cache = None
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        seq_len = inputs_embeds.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        static = cache is not None and cache.static_keys is not None
        if static:
            # HyLoCache.static_step: positions live on the device (a replayed CUDA graph moves them on), and the
            # attention layers read a fixed number of key slots, of which those up to the position hold tokens.
            if seq_len != 1 or attention_mask is not None or position_ids is not None:
                raise ValueError("a static step takes one token per sequence and neither attention_mask nor "
                                 f"position_ids (got {seq_len} tokens)")
            position_ids = cache.position[None]
        if position_ids is None:
            position_ids = torch.arange(past, past + seq_len, device=inputs_embeds.device)[None]
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError(f"attention_mask must be 2-D [batch, past + seq], got shape {tuple(attention_mask.shape)}")
            # An all-ones mask masks nothing; dropping it lets CUDA's SDPA use its causal kernels rather than a
            # materialised [T, S] mask. Reading the mask is a host sync and a data-dependent branch, so while
            # torch.compile / torch.export trace the model the mask is applied as given instead.
            if not torch.compiler.is_compiling() and bool(attention_mask.all()):
                attention_mask = None
        if static:
            slots = torch.arange(cache.static_keys, device=inputs_embeds.device)
            mask = AttentionMask(None, valid_keys=slots <= cache.position)
        else:
            mask = AttentionMask(attention_mask)

        hidden_states = inputs_embeds
        mixer_kwargs = {
            "position_embeddings": self.rope.cos_sin(position_ids, hidden_states.dtype),
            "position_ids": position_ids,
            "attention_mask": mask,
            "cache": cache,
            # Read by the attention and MLA mixers only (the linear ones take them in **_).
            "eager": self.config._attn_implementation == "eager",
            "attention_weights": [] if output_attentions else None,
        }
        # A decode step run eagerly on CUDA (no captured graph) is bound by host time: the norms and SwiGLU take
        # torch's native kernels rather than fla's, whose Python wrappers cost more per call (ops.backend.launch_light).
        light = cache is not None and not static and seq_len == 1 and hidden_states.is_cuda \
            and not torch.is_grad_enabled()
        with backend.launch_light(light):
            hidden_states, all_hidden = self._blocks(hidden_states, mixer_kwargs, output_hidden_states)
        if cache is not None:
            cache.advance(seq_len)
        weights = mixer_kwargs["attention_weights"]
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states, hidden_states=tuple(all_hidden) if all_hidden else None,
            attentions=tuple(weights) if weights is not None else None, **{CACHE_FIELD: cache},
        )
        return output if return_dict else output.to_tuple()

    def _blocks(self, hidden_states: torch.Tensor, mixer_kwargs: dict[str, Any],
                output_hidden_states: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The blocks and the final norm: the normed output and, when asked, the hidden states entering each block
        and the final one."""
        all_hidden = [] if output_hidden_states else None
        if all_hidden is None and self._chain_blocks():
            # Inference: each block's last residual add runs fused with the next norm (28 fewer kernels per step
            # at the Qwen3-1.7B shape); the same sums, as the separate adds round them.
            update = None
            for layer in self.layers:
                hidden_states, update = layer.forward_unreduced(hidden_states, update, **mixer_kwargs)
            hidden_states, _ = add_rms_norm(update, hidden_states, self.norm.weight, self.norm.variance_epsilon)
        else:
            for layer in self.layers:
                if all_hidden is not None:
                    all_hidden.append(hidden_states)
                hidden_states = layer(hidden_states, **mixer_kwargs)
            hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return hidden_states, all_hidden


# `generate(cache_implementation=...)`: None and "dynamic" give a growing HyLoCache; "static" goes to
# `_prepare_static_generation_cache` (a preallocated HyLoCache for static-cache decoding). Anything else is refused.
CACHE_IMPLEMENTATIONS = (None, "dynamic", "static")


class HyLoForCausalLM(HyLoPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HyLoConfig) -> None:
        super().__init__(config)
        self.model = HyLoModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def new_cache(self) -> HyLoCache:
        return HyLoCache(self.config)

    def cache_bytes(self, seq_len: int, batch_size: int = 1, dtype: torch.dtype | None = None) -> int:
        """Exact bytes the cache holds after ``seq_len`` tokens (activations in ``dtype``, default the model's)."""
        return cache_bytes(self.config, seq_len, batch_size, dtype or self.dtype)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: HyLoCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        past_key_values: HyLoCache | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Standard causal-LM forward. ``logits_to_keep=k`` computes logits for the last k positions only
        (1 for generation and long prefill); a 1-D tensor keeps those positions. The other arguments are
        :meth:`HyLoModel.forward`'s; further keywords go to the loss (``num_items_in_batch``)."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden_states = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()

    def _validate_generation_mode(self, generation_mode, generation_config, *args: Any, **kwargs: Any):
        """Refuse assisted and prompt-lookup decoding (and serving as another model's assistant) at the start of
        ``generate``: they decode drafted tokens and roll the cache back past the rejected ones, and a Mamba2/GDN
        state cannot be rolled back without keeping one state per drafted token, which :class:`HyLoCache` does
        not (nor does it crop attention layers, so all-attention layouts are refused too)."""
        if str(getattr(generation_mode, "value", generation_mode)) == "assisted_generation" or getattr(
                generation_config, "is_assistant", False):
            raise ValueError("HyLoForCausalLM.generate does not support assisted generation or prompt-lookup "
                             "decoding (assistant_model / prompt_lookup_num_tokens): its cache cannot roll back "
                             "rejected draft tokens; generate without them")
        parent = getattr(super(), "_validate_generation_mode", None)
        return parent(generation_mode, generation_config, *args, **kwargs) if parent is not None else None

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args: Any, **kwargs: Any):
        """generate() would build a transformers DynamicCache; a hybrid model needs its own."""
        key = "cache" if "cache" in inspect.signature(super().prepare_inputs_for_generation).parameters else (
            "past_key_values"
        )
        implementation = generation_config.cache_implementation
        if implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"HyLoForCausalLM: cache_implementation={implementation!r} is not supported; allowed: "
                             f"{', '.join(map(repr, CACHE_IMPLEMENTATIONS))} (every one a HyLoCache)")
        if model_kwargs.get(key) is not None or generation_config.use_cache is False:
            self._generation_graphs().adopt_cache(model_kwargs.get(key), generation_config, *args[:1],
                                                  attention_mask=model_kwargs.get("attention_mask"))
            return
        if implementation == "static" or (
                implementation is None and self._generation_graphs().static_by_default(generation_config, *args[:1])):
            self._prepare_static_generation_cache(generation_config, model_kwargs, key, *args, **kwargs)
            return
        model_kwargs[key] = HyLoCache(self.config)

    def _prepare_static_generation_cache(self, generation_config, model_kwargs: dict, key: str,
                                         generation_mode: Any = None, batch_size: int = 1,
                                         max_cache_length: int | None = None, *args: Any, **kwargs: Any) -> None:
        """The hook for ``cache_implementation="static"`` (and, on CUDA, for greedy and sampling by default): put a
        preallocated cache sized for the request in ``model_kwargs[key]`` (see :mod:`hylo_model.generation`)."""
        if max_cache_length is None:
            max_cache_length = generation_config.max_length - 1
        model_kwargs[key] = self._generation_graphs().prepare_cache(
            generation_config, generation_mode, batch_size, max_cache_length, model_kwargs.get("attention_mask"))

    # -------------------------------------------------------------- decode steps of generate (CUDA graphs)
    def generate(self, *args: Any, **kwargs: Any):
        """transformers' ``generate``, whose decode steps replay a captured CUDA graph on a static cache by default
        on CUDA (greedy and sampling, unpadded batches); ``disable_compile=True`` or
        ``cache_implementation="dynamic"`` opt out, ``cache_implementation="static"`` opts in anywhere (eager
        static steps off CUDA). Outputs equal the eager decode's; see :mod:`hylo_model.generation`."""
        with self._generation_graphs().session():
            return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, *args: Any, **kwargs: Any) -> dict:
        """transformers' preparation, except for the decode steps a captured graph serves: those need only the last
        token and the cache (:meth:`GenerationGraphs.step_inputs`)."""
        if not args:
            inputs = self._generation_graphs().step_inputs(input_ids, **kwargs)
            if inputs is not None:
                return inputs
        return super().prepare_inputs_for_generation(input_ids, *args, **kwargs)

    def _valid_auto_compile_criteria(self, model_kwargs: dict, generation_config) -> bool:
        return self._generation_graphs().uses_steps(model_kwargs)

    def get_compiled_call(self, compile_config) -> Any:
        """The decode step ``generate`` calls when :meth:`_valid_auto_compile_criteria` says so: HyLo's graph
        step rather than ``torch.compile``."""
        return self._generation_graphs().step

    def _generation_graphs(self) -> GenerationGraphs:
        graphs = self.__dict__.get("_graph_steps")
        if graphs is None:
            graphs = self.__dict__["_graph_steps"] = GenerationGraphs(self)
        return graphs

    def release_generation_graphs(self) -> None:
        """Free the static cache and CUDA graphs that ``generate`` keeps for the next call."""
        self._generation_graphs().release()


__all__ = ["HyLoForCausalLM", "HyLoModel", "HyLoPreTrainedModel", "HyLoDecoderLayer"]
