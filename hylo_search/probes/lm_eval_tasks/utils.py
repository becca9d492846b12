"""lm-eval glue for the ``hylo_*`` probe tasks: load or generate samples, the prompt, RULER's scoring, and
per-length metrics.

Task options arrive as lm-eval *metadata* (``--metadata '{...}'`` on the command line, which lm-eval merges with
``--model_args``; ``TaskManager(metadata=...)`` from Python):

* ``probe_data``: a ``.jsonl`` file or a folder of them (ours or RULER's) to read instead of generating;
* else samples are generated with ``tokenizer`` (falling back to ``pretrained``), at ``max_seq_lengths``
  (default ``[4096]``), ``num_samples`` per length (default 50), ``seed`` (default 0), ``haystack`` (file).

Every document reports ``score`` and a metric named by its length (``"4096"``), so lm-eval's table shows the
task's score per length; :class:`ProbeTask` declares those metrics once the lengths are known.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_eval.api.task import ConfigurableTask

from hylo_search.probes import generate_samples, get_task, read_jsonl, read_samples, render_answer
from hylo_search.probes.metrics import score_prediction


def _tokenizer(spec: Any):
    if spec is None:
        raise ValueError("the hylo probe tasks need a tokenizer to size their prompts: pass metadata "
                         "{'tokenizer': PATH} (or model_args pretrained=PATH), or 'probe_data' with ready samples")
    if not isinstance(spec, str):
        return spec
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec)


def load_probe_dataset(probe_task: str, **kwargs: Any):
    """``{"test": Dataset}`` of one probe task's samples (see the module docstring for the options)."""
    import datasets

    spec = get_task(probe_task)
    source = kwargs.get("probe_data")
    if source:
        path = Path(source)
        samples = read_jsonl(path, spec.name) if path.is_file() else read_samples(path)
        samples = [s for s in samples if s.task == spec.name]
        if not samples:
            raise ValueError(f"no {spec.name} samples in {source}")
    else:
        tokenizer = _tokenizer(kwargs.get("tokenizer") or kwargs.get("pretrained"))
        lengths = kwargs.get("max_seq_lengths") or [4096]
        samples = [s for n in lengths for s in generate_samples(
            spec.name, int(n), int(kwargs.get("num_samples", 50)), tokenizer, int(kwargs.get("seed", 0)),
            haystack=kwargs.get("haystack"))]
    return {"test": datasets.Dataset.from_list([s.to_json() for s in samples])}


def doc_to_text(doc: dict) -> str:
    return doc["input"] + doc["answer_prefix"]


def doc_to_target(doc: dict) -> str:
    return render_answer(doc["task"], doc["outputs"])


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """RULER's post-processing and metric on the generation; the score also under the sample's length."""
    score = score_prediction(get_task(doc["task"]).metric, results[0], doc["outputs"])
    return {"score": score, str(doc["max_length"]): score}


class ProbeTask(ConfigurableTask):
    """A configurable task whose per-length metrics (named by the lengths in its data) aggregate by mean."""

    def __init__(self, config: dict | None = None, **kwargs: Any) -> None:
        # lm-eval hands the YAML's own `class` key on to TaskConfig, which does not accept it.
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"}, **kwargs)

    def _lengths(self) -> list[str]:
        return sorted({str(n) for n in self.dataset["test"]["max_length"]}, key=int)

    def aggregation(self) -> dict:
        from lm_eval.api.metrics import mean

        return {**super().aggregation(), **{n: mean for n in self._lengths()}}

    def higher_is_better(self) -> dict:
        return {**super().higher_is_better(), **{n: True for n in self._lengths()}}
