"""The small teacher (``builtin:small``): a 10-layer Llama (d 384, GQA 6/2, RoPE, 15M parameters) trained here on
Python source code (the standard library and a fixed list of installed packages, :mod:`.corpus`) mixed with
synthetic long-context skills (:mod:`.skills`), first at 4K tokens then at 16K (:mod:`.train`), judged on the
held-out packages' code and on RULER probes at 4K/16K (:mod:`.evaluate`).

Build it on a GPU (resumable: rerun the same command after a time limit or a kill; each run stops by itself
before ``--max-minutes``)::

    python -m hylo_search.small_teacher --device cuda      # writes hylo_search/assets/small_teacher

The corpus needs the packages installed; build it where they are, then carry ``hylo_runs/small_teacher`` to the
GPU machine: ``python -m hylo_search.small_teacher --corpus-only``.
"""

from .corpus import HELDOUT, PACKAGES, build_corpus, read_documents
from .train import SIZES, model_config, train

ASSET_DIR_NAME = "small_teacher"

__all__ = ["ASSET_DIR_NAME", "HELDOUT", "PACKAGES", "SIZES", "build_corpus", "model_config", "read_documents",
           "train"]
