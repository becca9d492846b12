"""hylo_model: hybrid attention / MLA / Mamba2 / Gated DeltaNet decoders upcycled from Llama and Qwen.

Importing the package registers ``model_type="hylo"`` with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(dir)`` (and ``AutoModel``, the decoder without its LM head) loads a saved
HyLo model.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import HyLoCache, cache_bytes, layer_cache_bytes
from .config import HyLoConfig
from .graphs import GraphDecoder
from .layout import MIXERS, LayerSpec, Layout
from .model import HyLoForCausalLM, HyLoModel
from .version import __version__  # noqa: F401  (the package version, re-exported)

AutoConfig.register(HyLoConfig.model_type, HyLoConfig, exist_ok=True)
AutoModel.register(HyLoConfig, HyLoModel, exist_ok=True)
AutoModelForCausalLM.register(HyLoConfig, HyLoForCausalLM, exist_ok=True)

__all__ = [
    "MIXERS",
    "GraphDecoder",
    "HyLoCache",
    "HyLoConfig",
    "HyLoForCausalLM",
    "HyLoModel",
    "LayerSpec",
    "Layout",
    "cache_bytes",
    "layer_cache_bytes",
]

from .upcycle import sanity_check, save_upcycled, upcycle  # noqa: E402  (needs the model registered first)

__all__ += ["sanity_check", "save_upcycled", "upcycle"]
