"""HyLoConfig: the teacher's dimensions plus the hybrid layout and each mixer's hyper-parameters."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from .layout import MIXERS, Layout


class HyLoConfig(PretrainedConfig):
    r"""Configuration of a HyLo hybrid decoder.

    The dense part (embeddings, RMSNorms, SwiGLU MLPs, attention) mirrors Llama / Qwen2 / Qwen3 so that an upcycled
    student can copy the teacher's weights; ``hylo_layout`` says which mixer each layer uses (it lives in a field
    of our own because transformers validates ``layer_types``).

    Mixer hyper-parameters (defaults are derived from the attention dimensions, as upcycling needs them):

    * MLA (DeepSeek-V2/V3 latent attention with decoupled RoPE): ``kv_lora_rank`` (default; a layer's rank in the
      layout overrides it), ``q_lora_rank`` (None = full-rank ``q_proj``), ``qk_rope_head_dim``,
      ``qk_nope_head_dim``, ``v_head_dim``, ``mla_rope_heads`` (1 = DeepSeek's single shared RoPE key; more keeps one
      RoPE key per KV group, as MHA2MLA does), ``mla_kv_norm`` (RMSNorm on the latent, ``kv_a_layernorm``),
      ``mla_rope_pairs`` (per layer: which of the model's rotary frequency pairs the RoPE part uses; None = a fresh
      RoPE grid of ``qk_rope_head_dim`` dims, as DeepSeek).
    * Mamba2 (SSD): ``mamba_num_heads``, ``mamba_head_dim``, ``mamba_d_state``, ``mamba_n_groups`` (groups of C, and
      of B unless ``mamba_xb_heads`` is set), ``mamba_xb_heads`` (heads of x and groups of B kept in the projection
      and repeated to ``mamba_num_heads`` at run time, as Mamba-in-the-Llama keeps GQA), ``mamba_conv_kernel``,
      ``mamba_expand`` (used only when ``mamba_num_heads`` is None), ``mamba_chunk_size``, ``mamba_gate_bias`` (a
      bias ``z_bias`` on the z gate, so an upcycled layer can start with a neutral gate silu(z) = 1).
    * GDN (Gated DeltaNet): ``gdn_num_heads`` (q/k heads), ``gdn_num_v_heads``, ``gdn_head_k_dim``,
      ``gdn_head_v_dim``, ``gdn_conv_kernel``, ``gdn_use_gate`` (output gate), ``gdn_chunk_size``,
      ``gdn_gate_bias`` (a bias on ``g_proj``, for the same neutral start).
    """

    model_type = "hylo"
    keys_to_ignore_at_inference = ["cache"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 2048,
        intermediate_size: int = 6144,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 16,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 40960,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        rope_parameters: dict[str, Any] | None = None,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        qk_norm: bool = False,
        hylo_layout: str | None = None,
        kv_lora_rank: int = 128,
        q_lora_rank: int | None = None,
        qk_rope_head_dim: int | None = None,
        qk_nope_head_dim: int | None = None,
        v_head_dim: int | None = None,
        mla_rope_heads: int = 1,
        mla_kv_norm: bool = False,
        mla_rope_pairs: list[list[int] | None] | None = None,
        mamba_num_heads: int | None = None,
        mamba_head_dim: int | None = None,
        mamba_d_state: int | None = None,
        mamba_n_groups: int | None = None,
        mamba_xb_heads: int | None = None,
        mamba_conv_kernel: int = 4,
        mamba_expand: float | None = None,
        mamba_chunk_size: int = 64,
        mamba_gate_bias: bool = False,
        gdn_num_heads: int | None = None,
        gdn_num_v_heads: int | None = None,
        gdn_head_k_dim: int | None = None,
        gdn_head_v_dim: int | None = None,
        gdn_conv_kernel: int = 4,
        gdn_use_gate: bool = True,
        gdn_chunk_size: int = 64,
        gdn_gate_bias: bool = False,
        hylo_provenance: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.qk_norm = qk_norm
        legacy_theta = kwargs.pop("rope_theta", None)
        legacy_scaling = kwargs.pop("rope_scaling", None)
        if rope_parameters is None:
            rope_parameters = dict(legacy_scaling or {"rope_type": "default"})
            rope_parameters.setdefault("rope_theta", legacy_theta if legacy_theta is not None else 10000.0)
        self.rope_parameters = dict(rope_parameters)
        self.rope_parameters.setdefault("rope_type", self.rope_parameters.pop("type", "default"))

        self.hylo_layout = str(Layout.parse(hylo_layout)) if hylo_layout else ",".join(["A"] * num_hidden_layers)

        self.kv_lora_rank = kv_lora_rank
        self.q_lora_rank = q_lora_rank
        self.qk_rope_head_dim = qk_rope_head_dim if qk_rope_head_dim is not None else min(64, self.head_dim)
        self.qk_nope_head_dim = (
            qk_nope_head_dim if qk_nope_head_dim is not None else self.head_dim - self.qk_rope_head_dim
        )
        self.v_head_dim = v_head_dim or self.head_dim
        self.mla_rope_heads = mla_rope_heads
        self.mla_kv_norm = mla_kv_norm
        self.mla_rope_pairs = mla_rope_pairs

        self.mamba_head_dim = mamba_head_dim or self.head_dim
        if mamba_num_heads is None:
            mamba_num_heads = (
                int(mamba_expand * hidden_size) // self.mamba_head_dim if mamba_expand else num_attention_heads
            )
        self.mamba_num_heads = mamba_num_heads
        self.mamba_expand = mamba_expand
        self.mamba_d_state = mamba_d_state or self.head_dim
        self.mamba_n_groups = mamba_n_groups or mamba_num_heads
        self.mamba_xb_heads = mamba_xb_heads
        self.mamba_conv_kernel = mamba_conv_kernel
        self.mamba_chunk_size = mamba_chunk_size
        self.mamba_gate_bias = mamba_gate_bias

        self.gdn_num_heads = gdn_num_heads or num_attention_heads
        self.gdn_num_v_heads = gdn_num_v_heads or self.gdn_num_heads
        self.gdn_head_k_dim = gdn_head_k_dim or self.head_dim
        self.gdn_head_v_dim = gdn_head_v_dim or self.head_dim
        self.gdn_conv_kernel = gdn_conv_kernel
        self.gdn_use_gate = gdn_use_gate
        self.gdn_chunk_size = gdn_chunk_size
        self.gdn_gate_bias = gdn_gate_bias
        self.hylo_provenance = hylo_provenance

        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate_hylo()

    # ------------------------------------------------------------------------------------------------ layout
    @property
    def layout(self) -> Layout:
        return Layout.parse(self.hylo_layout, self.num_hidden_layers)

    @property
    def layer_mixers(self) -> list[str]:
        return self.layout.mixers

    def layer_kv_lora_rank(self, layer_idx: int) -> int:
        return self.layout[layer_idx].kv_lora_rank or self.kv_lora_rank

    def layer_rope_pairs(self, layer_idx: int) -> list[int] | None:
        if not self.mla_rope_pairs:
            return None
        return self.mla_rope_pairs[layer_idx]

    @property
    def max_kv_lora_rank(self) -> int:
        """Largest useful latent rank: the rank of kv_b_proj's output, capped by the hidden size."""
        return min(self.hidden_size, self.num_attention_heads * (self.qk_nope_head_dim + self.v_head_dim))

    @property
    def mamba_x_heads(self) -> int:
        return self.mamba_xb_heads or self.mamba_num_heads

    @property
    def mamba_b_groups(self) -> int:
        return self.mamba_xb_heads or self.mamba_n_groups

    # -------------------------------------------------------------------------------------------- validation
    def validate_hylo(self) -> None:
        """Check every dimension the layers rely on; errors name the field and the allowed values."""
        def need(condition: bool, field: str, message: str) -> None:
            if not condition:
                raise ValueError(f"HyLoConfig.{field}: {message}")

        layout = Layout.parse(self.hylo_layout, self.num_hidden_layers)
        rope_type = self.rope_parameters.get("rope_type", "default")
        # longrope picks its factor set per call by sequence length in transformers; HyLo's RoPE tables would fix
        # one set when the model is built, silently unlike the teacher, so it is refused.
        need(rope_type != "longrope", "rope_parameters.rope_type",
             "'longrope' is not supported; allowed: default, linear, dynamic, yarn, llama3")
        if rope_type == "dynamic":
            need(float(self.rope_parameters.get("factor", 0)) >= 1, "rope_parameters.factor",
                 f"dynamic RoPE needs a factor >= 1, got {self.rope_parameters.get('factor')}")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
             f"{self.num_key_value_heads} must divide num_attention_heads={self.num_attention_heads}")
        if "mla" in layout.mixers:
            need(self.qk_rope_head_dim % 2 == 0 and self.qk_rope_head_dim > 0, "qk_rope_head_dim",
                 f"{self.qk_rope_head_dim} must be a positive even number")
            need(self.qk_nope_head_dim >= 0, "qk_nope_head_dim", f"{self.qk_nope_head_dim} must be >= 0")
            need(self.v_head_dim > 0, "v_head_dim", f"{self.v_head_dim} must be > 0")
            need(self.mla_rope_heads >= 1 and self.num_attention_heads % self.mla_rope_heads == 0,
                 "mla_rope_heads", f"{self.mla_rope_heads} must divide num_attention_heads={self.num_attention_heads}")
            need(self.q_lora_rank is None or self.q_lora_rank >= 1, "q_lora_rank",
                 f"{self.q_lora_rank} must be None or >= 1")
            layout.check_ranks(self.max_kv_lora_rank, self.kv_lora_rank)
            if self.mla_rope_pairs is not None:
                need(len(self.mla_rope_pairs) == self.num_hidden_layers, "mla_rope_pairs",
                     f"needs one entry per layer ({self.num_hidden_layers}), got {len(self.mla_rope_pairs)}")
                for index, pairs in enumerate(self.mla_rope_pairs):
                    if pairs is None:
                        continue
                    need(len(pairs) * 2 == self.qk_rope_head_dim, f"mla_rope_pairs[{index}]",
                         f"has {len(pairs)} pairs but qk_rope_head_dim={self.qk_rope_head_dim} needs "
                         f"{self.qk_rope_head_dim // 2}")
                    need(all(0 <= p < self.head_dim // 2 for p in pairs) and len(set(pairs)) == len(pairs),
                         f"mla_rope_pairs[{index}]", f"pairs must be distinct, in 0..{self.head_dim // 2 - 1}")
        if "mamba2" in layout.mixers:
            heads = self.mamba_num_heads
            for field in ("mamba_n_groups", "mamba_x_heads", "mamba_b_groups"):
                value = getattr(self, field)
                need(value >= 1 and heads % value == 0, field.replace("x_heads", "xb_heads").replace(
                    "b_groups", "xb_heads"), f"{value} must divide mamba_num_heads={heads}")
            need(self.mamba_conv_kernel >= 1, "mamba_conv_kernel", f"{self.mamba_conv_kernel} must be >= 1")
        if "gdn" in layout.mixers:
            need(self.gdn_num_v_heads % self.gdn_num_heads == 0, "gdn_num_v_heads",
                 f"{self.gdn_num_v_heads} must be a multiple of gdn_num_heads={self.gdn_num_heads}")
            need(self.gdn_conv_kernel >= 1, "gdn_conv_kernel", f"{self.gdn_conv_kernel} must be >= 1")

    def with_layout(self, layout: Layout | str, **overrides: Any) -> HyLoConfig:
        """A copy of this config with another layout (and any other field overridden)."""
        data = self.to_dict()
        for key in ("model_type", "transformers_version", "architectures"):
            data.pop(key, None)
        data.update(overrides)
        data["hylo_layout"] = str(Layout.parse(layout))
        return HyLoConfig(**data)


__all__ = ["HyLoConfig", "MIXERS"]
