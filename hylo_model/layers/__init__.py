"""One file per mixer, one interface: ``forward(hidden_states, *, position_embeddings, position_ids,
attention_mask, cache)``. The decoder block picks the class from :data:`MIXER_CLASSES`."""

from .attention import Attention
from .gated_deltanet import GatedDeltaNet
from .mamba2 import Mamba2
from .mla import MultiHeadLatentAttention

MIXER_CLASSES = {
    "attention": Attention,
    "mla": MultiHeadLatentAttention,
    "mamba2": Mamba2,
    "gdn": GatedDeltaNet,
}

__all__ = ["MIXER_CLASSES", "Attention", "MultiHeadLatentAttention", "Mamba2", "GatedDeltaNet"]
