"""The two files every saved HyLo folder carries beside its weights, so that stock tools load it with
``trust_remote_code=True`` and no ``import hylo_model``: ``AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)``, ``pipeline("text-generation", dir, trust_remote_code=True)``, ``lm_eval --model hf
--model_args pretrained=dir,trust_remote_code=True``.

They hold no model code: each subclasses the installed package's class, so a folder never pins an old copy of the
model, and a machine without the package gets "pip install hylo-search". They are subclasses (not re-exports) because
transformers marks a class loaded this way for auto-saving, and the mark must land on the shim, not on the package's
class. :func:`hylo_model.saving.finish_folder` copies them and writes the matching ``auto_map``.
"""

from pathlib import Path

FILES = ("configuration_hylo.py", "modeling_hylo.py")
AUTO_MAP = {
    "AutoConfig": "configuration_hylo.HyLoConfig",
    "AutoModelForCausalLM": "modeling_hylo.HyLoForCausalLM",
}
FOLDER = Path(__file__).parent
