"""``hylo-search upcycle TEACHER --layout L --out DIR``: convert a checkpoint, run the sanity gates, save."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "upcycle", help="convert a Llama/Qwen checkpoint into a HyLo layout and check it",
        description="Convert a Llama/Qwen2/Qwen3 checkpoint (directory or hub id) into a HyLo student with the "
        "given layout, run the sanity gates, and save it with the teacher's tokenizer.",
    )
    parser.add_argument("teacher", help="teacher directory or hub id (safetensors)")
    parser.add_argument("--layout", required=True, help='layout code, e.g. "A,L128,M,G,..." or a layout YAML file')
    parser.add_argument("--out", required=True, help="output directory (new or empty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous upcycled model in --out (never a folder holding anything else)")
    parser.add_argument("--kv-lora-rank", type=int, default=None, help="default MLA latent rank (L without a rank)")
    parser.add_argument("--qk-rope-head-dim", type=int, default=None, help="rotary dims kept per MLA head")
    parser.add_argument("--mla-rope-heads", type=int, default=1, help="RoPE keys per MLA layer (1 = DeepSeek)")
    parser.add_argument("--rope-pairs", default="qk_norm", help="qk_norm | high_frequency | uniform")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-check", action="store_true", help="skip the sanity gates")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from hylo_model import Layout, sanity_check, save_upcycled, upcycle
    from hylo_model.saving import check_output, saved_kind
    from hylo_model.train.trainer import load_teacher

    from ..define.layout_files import read_layout
    from ..define.teachers import check_teacher_weights, is_builtin, teacher_directory
    from ..errors import UsageError
    from ._outputs import output_folder

    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        check_output(args.out, "upcycled", args.overwrite)
        # What is there is judged above; this also finds a folder the model could not be saved in.
        output_folder(args.out, "--out", lambda folder: saved_kind(folder) == "upcycled", "upcycled model")
        check_teacher_weights(args.teacher)
        # os.path.isfile, unlike Path.is_file, never raises (a long layout code is no file name).
        layout = read_layout(args.layout) if os.path.isfile(args.layout) else Layout.parse(args.layout)
        # The gates need the teacher model; without them upcycle streams its tensors from the safetensors files.
        # A built-in teacher (builtin:tiny) as the folder it is shipped or built in, as `train` and `study` take it.
        source = str(teacher_directory(args.teacher)) if is_builtin(args.teacher) else args.teacher
        teacher = source if args.no_check else load_teacher(source, dtype)[0].to(args.device or "cpu")
        student = upcycle(
            teacher, layout, seed=args.seed, device=args.device, dtype=dtype,
            kv_lora_rank=args.kv_lora_rank, qk_rope_head_dim=args.qk_rope_head_dim,
            mla_rope_heads=args.mla_rope_heads, rope_pairs=args.rope_pairs,
        )
    except (ValueError, TypeError, OSError) as error:
        raise UsageError(str(error)) from None
    if not args.no_check:
        report = sanity_check(student, teacher)
        print(report.table())
        if not report.ok:
            print("sanity gates failed: " + "; ".join(report.failures()))
            return 1
    try:
        out = save_upcycled(student, args.out, overwrite=args.overwrite)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(f"saved {layout} -> {out}")
    return 0
