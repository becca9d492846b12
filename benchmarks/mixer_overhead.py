"""Each mixer op's fast path against the bare library kernel it calls, forward, at 4K-64K tokens.

    python benchmarks/mixer_overhead.py --lengths 4k,16k,64k

Ours: ``hylo_model.ops`` entry points (dispatch, dtype handling, state layout) and the attention helper
``hylo_model.layers.common.sdpa``; bare: fla's ``chunk_gated_delta_rule`` / ``chunk_simple_gla`` and
``torch.nn.functional.scaled_dot_product_attention`` on the same tensors. Median of ``triton.testing.do_bench``.
B=1, 16 heads, head_dim 128 (GDN q/k/v, SSD P=N=128), 8 KV heads for attention, bf16. Ours runs the whole op as
the mixers call it (SSD with its D skip, which fla's kernel does not have); the bare SSD call includes only the
input mapping it cannot run without (``v = dt·x``, ``g = dt·A``). Where mamba_ssm imports, the SSD op takes its
fused kernel (D in its epilogue) on long inputs; each path it picks between is then timed too.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=50, rep=200, return_mode="median")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="4k,16k,64k")
    args = parser.parse_args()
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    from fla.ops.simple_gla import chunk_simple_gla

    from hylo_model.layers.common import AttentionMask, sdpa
    from hylo_model.ops import backend
    from hylo_model.ops.gated_delta import gated_delta_rule, l2norm
    from hylo_model.ops.ssd import ssd, ssd_fla, ssd_mamba

    mamba = backend.has_module("mamba_ssm.ops.triton.ssd_combined")

    dev, dt = "cuda", torch.bfloat16
    print(f"card: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print("| op | T | ours ms | bare kernel ms | ratio |\n|---|---|---|---|---|", flush=True)
    for text in args.lengths.split(","):
        T = int(text.rstrip("k")) * 1024
        H, D = 16, 128
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, T, H, D, device=dev, dtype=dt) for _ in range(3))
        q, k = l2norm(q), l2norm(k)
        g = -torch.rand(1, T, H, device=dev, dtype=torch.float32) * 0.1
        beta = torch.rand(1, T, H, device=dev, dtype=torch.float32).to(dt)
        with torch.no_grad():
            ours = bench(lambda: gated_delta_rule(q, k, v, g, beta, output_final_state=True))
            bare = bench(lambda: chunk_gated_delta_rule(q, k, v, g, beta, scale=D**-0.5, output_final_state=True))
        print(f"| gated_delta_rule | {T} | {ours:.3f} | {bare:.3f} | {ours / bare:.2f} |", flush=True)

        x = torch.randn(1, T, H, D, device=dev, dtype=dt)
        dtv = torch.rand(1, T, H, device=dev, dtype=torch.float32) * 0.1
        A = -torch.rand(H, device=dev) * 4
        B = torch.randn(1, T, H, D, device=dev, dtype=dt)
        C = torch.randn(1, T, H, D, device=dev, dtype=dt)
        skip = torch.randn(H, device=dev)
        with torch.no_grad():
            bare = bench(lambda: chunk_simple_gla(C, B, (x * dtv[..., None]).to(dt), g=dtv * A, scale=1.0,
                                                  output_final_state=True))
            rows = {"ssd (Mamba2, with D; the op)": lambda: ssd(x, dtv, A, B, C, D=skip, output_final_state=True)}
            if mamba:  # the op picks per length between these (ops.ssd.takes_mamba): time each
                rows["ssd (Mamba2, with D; fla)"] = lambda: ssd_fla(x, dtv, A, B, C, D=skip, output_final_state=True)
                for chunk in (64, 256):
                    rows[f"ssd (Mamba2, with D; mamba_ssm, chunk {chunk})"] = lambda chunk=chunk: ssd_mamba(
                        x, dtv, A, B, C, D=skip, output_final_state=True, chunk_size=chunk)
            for label, fn in rows.items():
                ours = bench(fn)
                print(f"| {label} | {T} | {ours:.3f} | {bare:.3f} | {ours / bare:.2f} |", flush=True)

        qa = torch.randn(1, H, T, D, device=dev, dtype=dt)
        ka, va = (torch.randn(1, 8, T, D, device=dev, dtype=dt) for _ in range(2))
        with torch.no_grad():
            ours = bench(lambda: sdpa(qa, ka, va, AttentionMask(None), D**-0.5))
            bare = bench(lambda: F.scaled_dot_product_attention(qa, ka, va, is_causal=True, enable_gqa=True))
        print(f"| attention (SDPA, GQA) | {T} | {ours:.3f} | {bare:.3f} | {ours / bare:.2f} |", flush=True)


if __name__ == "__main__":
    main()
