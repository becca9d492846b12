"""Training throughput of a short distill stage at Qwen3-1.7B shape (random-weight teacher), on GPUs.

Runs :func:`hylo_model.train.run_recipe` — the code ``hylo-search train`` runs — for a few warm-up steps and a few
measured steps at each context length, and prints a markdown table (tokens/s over the measured steps, seconds
per step, peak GPU memory, which fast kernels imported) to paste into benchmarks/RESULTS.md with the date, card and
command. The teacher is a Qwen3ForCausalLM with random weights in bf16, the student its upcycle to ``--layout``
(float32 master weights, bf16 autocast, gradient checkpointing), the data random token ids.

    python benchmarks/train_throughput.py                         # 4K and 16K, default layout, one GPU
    python benchmarks/train_throughput.py --seq 4096 16384 32768 --layout "A,G,G,L128,..."

Two GPUs against one at the same global batch (the issue's DDP check):

    python benchmarks/train_throughput.py --seq 4096 --batch 2 --micro 2 --steps 8 --losses-out one.json
    accelerate launch --num_processes 2 benchmarks/train_throughput.py --seq 4096 --batch 2 --micro 1 \\
        --steps 8 --losses-out two.json
    python benchmarks/train_throughput.py --compare one.json two.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Qwen3-1.7B's config.json (28 layers, GQA 16/8, head_dim 128, tied embeddings, rope_theta 1e6).
QWEN3_1P7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 1000000.0})
# Every mixer kind, one attention layer in four.
DEFAULT_LAYOUT = ",".join(["A", "G", "M", "L128"] * 7)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[4096, 16384], help="context lengths")
    parser.add_argument("--layout", default=DEFAULT_LAYOUT, help="student layout (28 layers)")
    parser.add_argument("--batch", type=int, default=None, help="global sequences per step (default: processes)")
    parser.add_argument("--micro", type=int, default=1, help="sequences per forward per GPU")
    parser.add_argument("--steps", type=int, default=7, help="optimizer steps per length (first --warmup unmeasured)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--kl-chunk", type=int, default=1024)
    parser.add_argument("--no-checkpointing", action="store_true", help="keep activations (more memory)")
    parser.add_argument("--train", default="mixers", help="comma-separated parameter groups to train")
    parser.add_argument("--losses-out", default=None, help="write the per-step losses (rank 0) as JSON")
    parser.add_argument("--compare", nargs=2, default=None, metavar="JSON", help="compare two --losses-out files")
    parser.add_argument("--smoke", action="store_true",
                        help="a 4-layer, 64-wide model that also runs on a CPU: checks the script, measures nothing")
    return parser.parse_args()


def compare(first: str, second: str) -> None:
    a, b = (json.loads(Path(p).read_text()) for p in (first, second))
    print(f"| step | {a['processes']} process(es) | {b['processes']} process(es) | rel. diff |\n|---|---|---|---|")
    worst = 0.0
    for step, (x, y) in enumerate(zip(a["losses"], b["losses"]), 1):
        rel = abs(x - y) / max(abs(x), 1e-12)
        worst = max(worst, rel)
        print(f"| {step} | {x:.6f} | {y:.6f} | {rel:.2e} |")
    print(f"\nmax relative difference {worst:.2e} over {min(len(a['losses']), len(b['losses']))} steps")


def main() -> None:
    args = parse_args()
    if args.compare:
        compare(*args.compare)
        return
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from hylo_model.ops.backend import has_module
    from hylo_model.train import make_accelerator, run_recipe

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        sys.exit("this benchmark needs a CUDA GPU (--smoke checks the script on a CPU)")
    shape = dict(QWEN3_1P7B)
    if args.smoke:
        shape.update(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)
        if args.layout == DEFAULT_LAYOUT:
            args.layout = "A,G,M,L16"
    accelerator = make_accelerator()
    device, world = accelerator.device, accelerator.num_processes
    batch = args.batch or world * args.micro
    torch.manual_seed(0)
    with torch.device(device):
        teacher = Qwen3ForCausalLM(Qwen3Config(**shape)).to(torch.bfloat16 if cuda else torch.float32).eval()
    kernels = ", ".join(m for m in ("fla.ops", "mamba_ssm", "tilelang") if has_module(m)) or "none (torch fallback)"
    if cuda:
        import triton

        from hylo_model.ops.backend import fla_gated_backward_broken

        refused = fla_gated_backward_broken(device)
        print(f"triton {triton.__version__}; fla's gated chunk backward "
              f"{'refused here (fla #640): GDN/Mamba2 train on the PyTorch path' if refused else 'runs here'}",
              flush=True)
    rows = []
    for seq in args.seq:
        docs = torch.randint(0, shape["vocab_size"], (2 * args.steps * batch + 24, seq),
                             generator=torch.Generator().manual_seed(seq))
        recipe = {
            "name": f"bench-{seq}", "seed": 0,
            "data": {"sources": [{"path": "unused"}], "eval_fraction": 0.2, "shuffle_block": 1},
            "runtime": {"gradient_checkpointing": not args.no_checkpointing,
                        "mixed_precision": "bf16" if cuda else "no"},
            "eval": {"sequences": 1, "micro_batch_size": 1},
            "stages": [{"kind": "distill", "steps": args.steps, "seq_len": seq, "batch_size": batch,
                        "micro_batch_size": args.micro, "warmup_steps": 0,
                        "lr": {group: 1e-4 for group in args.train.split(",")}, "kl_chunk": args.kl_chunk}],
        }
        times: list[float] = []

        def on_step(_info) -> None:
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            if accelerator.is_main_process:
                # One line per step as it ends, so a run cut off by a time limit still reports what it measured.
                print(f"seq {seq} step {len(times)}/{args.steps}: {times[-1] - start:.1f} s since the stage began",
                      flush=True)

        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            result = run_recipe(teacher, args.layout, recipe, data=docs, accelerator=accelerator, on_step=on_step,
                                progress="off")
        except torch.cuda.OutOfMemoryError:
            rows.append((seq, None, None, torch.cuda.max_memory_allocated() / 2**30))
            continue
        measured = times[args.warmup:]
        seconds = (measured[-1] - times[args.warmup - 1]) / len(measured) if args.warmup else (
            (times[-1] - start) / len(times))
        rows.append((seq, batch * seq / seconds, seconds, torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0))
        if args.losses_out and accelerator.is_main_process:
            Path(args.losses_out).write_text(json.dumps({"processes": world, "seq": seq, "batch": batch,
                                                         "losses": result.losses["distill"]}))
        del result
    if accelerator.is_main_process:
        card = torch.cuda.get_device_name(device) if cuda else "CPU smoke run"
        print(f"\n{card} x{world}, torch {torch.__version__}, fast kernels: {kernels}")
        print(f"layout {args.layout}; global batch {batch} (micro {args.micro}); "
              f"{args.steps - args.warmup} measured steps after {args.warmup}; "
              f"checkpointing {'off' if args.no_checkpointing else 'on'}; training {args.train}\n")
        print("| context | tokens/s | s/step | peak GiB (this GPU) |\n|---:|---:|---:|---:|")
        for seq, rate, step, peak in rows:
            shown = "OOM" if rate is None else f"{rate:,.0f}"
            print(f"| {seq} | {shown} | {'-' if step is None else f'{step:.2f}'} | {peak:.1f} |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
