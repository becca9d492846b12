"""The embedded tiny teacher (``builtin:tiny``): a small Llama trained here, on text and probes generated here, so
that the CPU demo runs the real code path (upcycle, distill, probe, search) on a model with real in-context
retrieval at its context length.

Rebuild it (deterministic given the seed and thread count on a CPU; the shipped copy was made by exactly this
command, see ``training.json`` beside it)::

    python -m hylo_search.tiny_teacher            # writes hylo_search/assets/tiny_teacher

What it is: Llama, :data:`CONFIG` (2 layers, d 128, 4 heads of 32, 2 KV heads); a byte-level BPE tokenizer of 3072
tokens trained here on the shipped essays, word lists and probe templates, with numbers split into chunks of up to
three digits (as Llama 3's tokenizer does). Training, all from one seed, in three stages (what makes retrieval
appear in a model this small):

1. **copying**: random runs of number tokens repeated once (loss on the repeat) — grows a content-based induction
   circuit (previous-token head in layer 0, induction head in layer 1);
2. **recall**: ``niah_single_1``-style documents with a short noise haystack (loss on the answer only), mixed with
   copying batches so the circuit is kept while the model learns where the answer goes;
3. **long**: RULER ``niah_single_1/2``, ``niah_multikey_1`` probes from :mod:`hylo_search.probes` at lengths up to
   ``context`` (loss on the answer), mixed with the first two and essay text (next-token loss on every token).

Deeper students of this recipe (3-6 layers, trained on the lent H100 while choosing the shipped teacher; those
runs are not kept as a benchmark) learned the copying stage markedly slower and did not reach useful recall at 1K
within the budget a CPU rebuild allows, hence two layers. Probe indices used in training start at 10**6; evaluation uses 0..samples-1, so they never overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from functools import cache
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from .probes import generate_sample, run_probes
from .probes import tasks as task_specs
from .probes.haystack import common_words, compose_essays, word_list
from .probes.scoring import answer_token_ids

ASSET_DIR = Path(__file__).parent / "assets" / "tiny_teacher"
CONTEXT = 1024
CONFIG = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, max_position_embeddings=2 * CONTEXT, rms_norm_eps=1e-6,
              tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
FAMILY = "llama"  # "qwen3" works too (q/k-norm); it learned the copying stage no faster
LONG_TASKS = ("niah_single_1", "niah_single_1", "niah_single_2", "niah_multikey_1")
TRAIN_INDEX = 10**6  # probe indices drawn by training start here; evaluation uses 0..samples-1


@cache
def build_tokenizer(vocab_size: int = 3072):
    """A byte-level BPE trained in memory on the probe templates, the essay text and the word lists (deterministic).

    Numbers split into chunks of up to three digits, one token each (as Llama 3's tokenizer does)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d{1,3}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # The templates are repeated so their words become single tokens, as in a real vocabulary.
    templates = [task_specs.NOISE, task_specs.NIAH_TEMPLATE, task_specs.NIAH_ANSWER_PREFIX, task_specs.NIAH_NEEDLE,
                 task_specs.VT_TEMPLATE, task_specs.VT_ANSWER_PREFIX, task_specs.CWE_TEMPLATE, task_specs.CWE_ANSWER_PREFIX,
                 task_specs.FWE_TEMPLATE, task_specs.FWE_ANSWER_PREFIX]
    numbers = " ".join(f"{i:03d} {i:02d} {i}" for i in range(1000))
    corpus = [compose_essays(20000, seed=1), " ".join(common_words())] + [numbers] * 3 + templates * 50
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=1 << 20)


class Curriculum:
    """The three stages' batches, drawn from one seeded ``random.Random``. A row is ``(ids, labels)`` with -100
    where no loss is taken."""

    def __init__(self, tokenizer, seed: int) -> None:
        self.tok, self.rng = tokenizer, random.Random(seed)
        self.numbers = [t for t in (tokenizer.convert_tokens_to_ids(f"{i:03d}") for i in range(1000))
                        if t != tokenizer.unk_token_id]
        self.essays = tokenizer(compose_essays(60000, seed=seed + 7), add_special_tokens=False)["input_ids"]
        template = task_specs.NIAH_TEMPLATE + task_specs.NIAH_ANSWER_PREFIX
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template = template.replace(old, new)
        self.template = template
        self.adjectives, self.nouns = word_list("adjectives"), word_list("nouns")
        self.index = TRAIN_INDEX

    def copying(self, size: int) -> list[tuple[list[int], list[int]]]:
        rows = []
        for _ in range(size):
            run = [self.rng.choice(self.numbers) for _ in range(self.rng.randint(5, 14))]
            rows.append(([self.tok.bos_token_id] + run + run, [-100] * (1 + len(run)) + run))
        return rows

    def short_recall(self, size: int) -> list[tuple[list[int], list[int]]]:
        rng, rows = self.rng, []
        for _ in range(size):
            key = f"{rng.choice(self.adjectives)}-{rng.choice(self.nouns)}"
            value = str(rng.randint(10**6, 10**7 - 1))
            lines = [task_specs.NOISE] * rng.randint(0, 3)
            needle = task_specs.NIAH_NEEDLE.format(type_needle_v="numbers", key=key, value=value)
            lines.insert(rng.randint(0, len(lines)), needle)
            prompt = self.template.format(type_needle_v="number", context="\n".join(lines), query=key)
            rows.append(self._answer_row(prompt, " " + value))
        return rows

    def probes(self, size: int, length: int) -> list[tuple[list[int], list[int]]]:
        rows = []
        for _ in range(size):
            sample = generate_sample(self.rng.choice(LONG_TASKS), length, self.index, self.tok,
                                     depth=self.rng.uniform(0, 100))
            self.index += 1
            rows.append(self._answer_row(sample.prompt, sample.answer))
        return rows

    def text(self, size: int, length: int) -> list[tuple[list[int], list[int]]]:
        rows = []
        for _ in range(size):
            start = self.rng.randrange(0, len(self.essays) - length)
            ids = [self.tok.bos_token_id] + self.essays[start:start + length - 1]
            rows.append((ids, [-100] + ids[1:]))
        return rows

    def _answer_row(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        ids = self.tok(prompt)["input_ids"]
        tail = answer_token_ids(self.tok, ids, prompt, answer)
        return ids + tail, [-100] * len(ids) + tail


def _loss(model, rows, pad: int) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens of right-padded ``rows``."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad)
    labels = torch.full((len(rows), width), -100)
    for i, (row, label) in enumerate(rows):
        ids[i, :len(row)], labels[i, :len(label)] = torch.tensor(row), torch.tensor(label)
    device = model.device
    return model(ids.to(device), labels=labels.to(device)).loss


def train_model(seed: int = 0, copy_steps: int = 650, recall_steps: int = 400, long_steps: int = 900,
                lr: float = 3e-3, family: str = FAMILY, layers: int = CONFIG["num_hidden_layers"],
                device: str = "cpu", context: int = CONTEXT, log=print):
    """The curriculum of the module docstring; ``long_steps=0`` stops after the short recall stage (what the
    probe tests train in-test). Returns ``(model, tokenizer, history)``, the model in eval mode on ``device``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    data = Curriculum(tokenizer, seed)
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  **dict(CONFIG, num_hidden_layers=layers))
    model = AutoModelForCausalLM.from_config(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    lengths = [n for n in (320, 512, 768, 1024, 1536, 2048) if n <= context]
    total = copy_steps + recall_steps + long_steps
    history, started = [], time.perf_counter()
    model.train()
    for step in range(total):
        if step < copy_steps:
            stage, loss = "copy", _loss(model, data.copying(32), tokenizer.pad_token_id)
        elif step < copy_steps + recall_steps:
            stage = "recall"
            loss = (_loss(model, data.copying(8), tokenizer.pad_token_id)
                    + _loss(model, data.short_recall(12), tokenizer.pad_token_id))
        else:
            stage = "long"
            k = step - copy_steps - recall_steps
            length = lengths[min(len(lengths) - 1, k * len(lengths) // max(1, long_steps // 2))] \
                if k < long_steps // 2 else data.rng.choice(lengths)
            for g in optimizer.param_groups:  # linear decay to 10 % over the last stage
                g["lr"] = lr * (1 - 0.9 * k / long_steps)
            loss = (_loss(model, data.probes(2, length), tokenizer.pad_token_id)
                    + _loss(model, data.short_recall(4), tokenizer.pad_token_id)
                    + _loss(model, data.copying(4), tokenizer.pad_token_id)
                    + 0.5 * _loss(model, data.text(2, 256), tokenizer.pad_token_id))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == total - 1:
            history.append({"step": step, "stage": stage, "loss": round(loss.item(), 4),
                            "seconds": round(time.perf_counter() - started, 1)})
            if log:
                log(json.dumps(history[-1]))
    return model.eval(), tokenizer, history


def train(out: Path, **options) -> dict:
    """Train (:func:`train_model` ``options``), evaluate and save the teacher into ``out``; returns the training
    report (also written as ``training.json``)."""
    started = time.perf_counter()
    model, tokenizer, history = train_model(**options)
    context = options.get("context", CONTEXT)
    report = {"options": options, "config": model.config.to_diff_dict(),
              "training_seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "history": history}
    report["probes"] = evaluate(model, tokenizer, lengths=[n for n in (320, 512, 1024, 2048) if n <= context])
    save(model.cpu(), tokenizer, out, report)
    return report


@torch.no_grad()
def evaluate(model, tokenizer, samples: int = 20, lengths=(512, 1024)) -> dict:
    """Probe accuracy (fast scorer) on the evaluation's own samples (indices 0..samples-1, study seed 0)."""
    result = run_probes(model, tokenizer, tasks="niah_single_1", lengths=list(lengths), samples=samples,
                        scorer="fast", seed=0)
    return result.summary()


def save(model, tokenizer, out: Path, report: dict, extra: dict[str, Path] | None = None) -> None:
    """Write config, safetensors, tokenizer, training.json (and ``extra`` files, by name) into ``out`` atomically:
    a temporary folder beside it, then one rename over the previous build (the builders of ``builtin:tiny`` and
    ``builtin:small`` both write their teacher this way)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, source in (extra or {}).items():
            shutil.copyfile(source, tmp / name)
        (tmp / "training.json").write_text(json.dumps(report, indent=1) + "\n")
        for file in tmp.iterdir():
            file.chmod(0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
            shutil.rmtree(old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hylo_search.tiny_teacher",
                                     description="Train the embedded tiny teacher (builtin:tiny) on the CPU.")
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copy-steps", type=int, default=650)
    parser.add_argument("--recall-steps", type=int, default=400)
    parser.add_argument("--long-steps", type=int, default=900)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--family", default=FAMILY, choices=("llama", "qwen3"))
    parser.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--context", type=int, default=CONTEXT, help="longest training probe (tokens)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the result depends on it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = train(args.out, seed=args.seed, copy_steps=args.copy_steps, recall_steps=args.recall_steps,
                   long_steps=args.long_steps, lr=args.lr, family=args.family, layers=args.layers,
                   device=args.device, context=args.context)
    print(json.dumps(report["probes"], indent=1))


if __name__ == "__main__":
    main()
