"""lm-eval's command line with HyLo registered and the probe tasks on the include path.

``lm_eval --model hf --model_args pretrained=DIR`` cannot load a HyLo directory by itself: nothing imports
:mod:`hylo_model`, so transformers does not know ``model_type="hylo"``. This entry point imports it, then hands
every argument to lm-eval unchanged (adding ``--include_path`` for the ``hylo_*`` probe tasks unless given)::

    python -m hylo_search.probes.lm_eval_cli --model hf --model_args pretrained=DIR,max_length=8192 \\
        --tasks hylo_niah_single_1,piqa --metadata '{"max_seq_lengths": [4096, 8192]}' --device cpu
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from lm_eval.__main__ import cli_evaluate

    import hylo_model  # noqa: F401  (registers model_type "hylo" with transformers' Auto classes)

    from .evaluation import TASK_DIR

    args = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in args and args and args[0] not in ("ls", "validate", "-h", "--help"):
        args += ["--include_path", str(TASK_DIR)]
    sys.argv = ["lm_eval", *args]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
