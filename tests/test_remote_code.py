"""A saved HyLo folder works in stock tools, in a fresh process that never imports ``hylo_model`` itself:
``AutoModelForCausalLM`` / ``pipeline`` with ``trust_remote_code=True``, and lm-eval's own ``--model hf`` CLI on a
shipped probe task. Without the package, the folder says ``pip install hylo-search``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hylo_model import HyLoForCausalLM, save_upcycled, upcycle

TEACHER = Path(__file__).resolve().parents[1] / "hylo_search" / "assets" / "tiny_teacher"
PROMPT = "the quick brown fox"

LOAD = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

folder = sys.argv[1]
try:
    AutoModelForCausalLM.from_pretrained(folder)
    plain = "loaded"
except ValueError as error:
    plain = str(error)
assert "hylo_model" not in sys.modules
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
ids = AutoTokenizer.from_pretrained(folder)(sys.argv[2], return_tensors="pt").input_ids
with torch.no_grad():
    generated = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:].tolist()
pipe = pipeline("text-generation", folder, trust_remote_code=True)
text = pipe(sys.argv[2], max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"]
print("\n" + json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "generated": generated,
                  "text": text, "plain": plain}))  # a line of its own: the refused load prompted on stdout
"""

# The package is made unimportable, as on a machine where only the folder was copied.
MISSING = """
import importlib.abc, sys

class NoHyLo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "hylo_model":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoHyLo())
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
except ImportError as error:
    print(error)
"""


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return save_upcycled(upcycle(str(TEACHER), "A,G"), tmp_path_factory.mktemp("remote") / "student")


def _run(args: list[str], modules: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_MODULES_CACHE": str(modules)}
    return subprocess.run(args, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=600,
                          **kwargs)


def test_fresh_process_loads_and_generates_with_trust_remote_code(student_dir, tmp_path):
    done = _run([sys.executable, "-c", LOAD, str(student_dir), PROMPT], tmp_path / "modules")
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["class"].startswith("transformers_modules.") and got["class"].endswith("modeling_hylo.HyLoForCausalLM")
    assert "trust_remote_code=True" in got["plain"]  # off unless asked

    from transformers import AutoTokenizer

    model = HyLoForCausalLM.from_pretrained(student_dir).eval()
    tok = AutoTokenizer.from_pretrained(student_dir)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:].tolist()
    assert got["generated"] == want
    assert got["text"] == tok.decode(want)


def test_without_the_package_the_folder_says_what_to_install(student_dir, tmp_path):
    done = _run([sys.executable, "-c", MISSING, str(student_dir)], tmp_path / "modules")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == ("this folder holds a HyLo model, whose code comes with the hylo-search package: "
                                   "pip install hylo-search")


def test_lm_eval_cli_scores_a_shipped_task_through_remote_code(student_dir, tmp_path):
    from hylo_search.probes.evaluation import TASK_DIR

    modules = tmp_path / "modules"
    done = _run([sys.executable, "-m", "lm_eval", "--model", "hf",
                 "--model_args", f"pretrained={student_dir},trust_remote_code=True,max_length=1024",
                 "--tasks", "hylo_niah_single_1", "--include_path", str(TASK_DIR),
                 "--metadata", json.dumps({"max_seq_lengths": [512], "num_samples": 2}), "--device", "cpu",
                 "--batch_size", "1", "--gen_kwargs", "max_gen_toks=8", "--output_path", str(tmp_path / "out")],
                modules, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (result_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(result_file.read_text())["results"]["hylo_niah_single_1"]
    assert 0.0 <= results["score,none"] <= 1.0 and "512,none" in results
    # lm-eval reached the model through the folder's own code (transformers copies it into its modules cache);
    # that import is what registered the installed package's classes.
    assert list(modules.rglob("configuration_hylo.py"))
