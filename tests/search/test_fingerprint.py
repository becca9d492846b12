"""The teacher fingerprint (the key of every converted-layer and block-library cache) is exact: the same weights
give the same fingerprint whatever the thread count, load dtype (a bf16 checkpoint read as bf16 or float32) or
source (a model in memory, a folder); one changed bit changes it."""

from __future__ import annotations

import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

from hylo_model.upcycle import TeacherSource
from hylo_search.define.teachers import teacher_directory

SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM
from hylo_model.upcycle import TeacherSource
torch.set_num_threads(int(sys.argv[2]))
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[3]))
print(TeacherSource.from_any(model).fingerprint())
"""


def _fingerprint(folder, threads: int, dtype: str) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(threads), dtype], capture_output=True,
                         text=True, timeout=300, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_fingerprint_is_exact_across_threads_dtypes_and_sources(tmp_path):
    folder = teacher_directory("builtin:tiny", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    reference = TeacherSource.from_any(model).fingerprint()
    assert _fingerprint(folder, 1, "float32") == reference
    assert _fingerprint(folder, 2, "float32") == reference
    assert TeacherSource.from_any(str(folder)).fingerprint() == reference
    bf16 = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(bf16)
    as_bf16 = _fingerprint(bf16, 2, "bfloat16")
    assert _fingerprint(bf16, 1, "float32") == as_bf16 != reference  # rounding to bf16 is another teacher


def test_one_bit_changes_the_fingerprint(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(teacher_directory("builtin:tiny", tmp_path), dtype=torch.float32)
    before = TeacherSource.from_any(model).fingerprint()
    with torch.no_grad():
        weight = model.model.layers[1].mlp.down_proj.weight
        weight.view(torch.int32)[0, 0] ^= 1  # the lowest mantissa bit of one weight
    assert TeacherSource.from_any(model).fingerprint() != before
