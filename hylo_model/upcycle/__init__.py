"""Teacher -> student: explicit key maps per family (``llama.py``, ``qwen.py``), initialisation of the new mixers
from the teacher's attention (``init.py``), and the sanity gates (``sanity.py``)."""

from .core import student_config, upcycle
from .init import PAIR_STRATEGIES, select_rope_pairs
from .sanity import LayerReport, SanityReport, layer_reconstruction, sanity_check
from .save import save_upcycled
from .source import SUPPORTED, TeacherSource

__all__ = [
    "PAIR_STRATEGIES",
    "SUPPORTED",
    "LayerReport",
    "SanityReport",
    "TeacherSource",
    "layer_reconstruction",
    "sanity_check",
    "save_upcycled",
    "select_rope_pairs",
    "student_config",
    "upcycle",
]
