"""What every task of a study shares inside one worker process: :class:`StudyRuntime`.

It holds the teacher (loaded once per process), its tokenizer and fingerprint, the held-out sequences (and the
teacher's log-probabilities on them), the converted-layer cache, the block library and the proxy / probe plug-ins;
a Ray worker that runs several trials loads the teacher once.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from .. import paths
from ..define.schema import ProxyConfig, StudyDef
from ..define.teachers import teacher_directory
from ..scoring.api import TrialContext
from ..scoring.kinds import probe_class, proxy_class
from .blocks import Library
from .converted import ConvertedLayers, teacher_fingerprint
from .data import token_sequences

_TEACHER_LOGPROB_LIMIT = 64 * 2**20  # cache the teacher's held-out log-probs only below this many floats


class StudyRuntime:
    """One study's shared state in this worker process (see the module docstring)."""

    _current: tuple[str, StudyRuntime] | None = None

    @classmethod
    def get(cls, study: dict[str, Any], study_dir: str) -> StudyRuntime:
        """The runtime of ``study`` in this process (one at a time: another study's is dropped first)."""
        key = hashlib.sha256(json.dumps([study, study_dir], sort_keys=True).encode()).hexdigest()
        if cls._current is None or cls._current[0] != key:
            cls._current = None
            cls._current = (key, cls(study, Path(study_dir)))
        return cls._current[1]

    def __init__(self, study: dict[str, Any], study_dir: Path) -> None:
        hf_logging.disable_progress_bar()
        self.definition = StudyDef.model_validate(study)
        self.study_dir = study_dir
        cache_dir = study_dir / paths.CACHE
        wants_gpu = self.definition.executor.resources.num_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if wants_gpu else "cpu")
        # CPU runs in float32 (bf16 matmuls are slow there); GPUs in bf16.
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        teacher_dir = teacher_directory(self.definition.teacher, cache_dir)
        self.teacher = AutoModelForCausalLM.from_pretrained(
            teacher_dir, dtype=self.dtype, trust_remote_code=False, use_safetensors=True).to(self.device).eval()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.definition.tokenizer or teacher_dir,
                                                           trust_remote_code=False)
        except (OSError, ValueError):
            self.tokenizer = None
        self.fingerprint = teacher_fingerprint(self.teacher)
        options = self.definition.upcycle.options()
        self.converted = ConvertedLayers(study_dir / paths.CONVERTED_LAYERS, self.fingerprint, options,
                                         self.definition.seed)
        self._teacher_logprobs: list[torch.Tensor] | None = None
        self._documents: dict[tuple[int, int], torch.Tensor] = {}
        self._proxies: dict[str, Any] = {}
        self.proxy_for(None)  # the study's own proxy, built (and its options checked) up front
        self._probes: dict[str, Any] = {}
        self.probes = self.probes_for(None)
        self.library = Library(self)

    def proxy_for(self, config: dict[str, Any] | None) -> Any:
        """The proxy plug-in for ``config`` (a proxy config mapping; None: the study's), one per process."""
        proxy = ProxyConfig.model_validate(config) if config is not None else self.definition.proxy
        key = proxy.model_dump_json()
        if key not in self._proxies:
            self._proxies[key] = proxy_class(proxy.kind)(proxy, self.definition)
        return self._proxies[key]

    def probes_for(self, overrides: dict[str, Any] | None) -> Any:
        """The probe plug-in of the study's probe config with ``overrides`` (fields such as ``samples``)."""
        config = self.definition.probes.model_copy(update=overrides or {})
        key = config.model_dump_json()
        if key not in self._probes:
            self._probes[key] = probe_class(config.kind)(config, self.definition)
        return self._probes[key]

    # -------------------------------------------------------------------------------------------------- data
    @functools.cached_property
    def heldout(self) -> torch.Tensor:
        """``[heldout_sequences, heldout_length]`` held-out token ids (drawn on first use: a recipe proxy scores
        on its own evaluation split and never needs them)."""
        data = self.definition.data
        return self.sequences(data.heldout_length, data.heldout_sequences, stream=0)

    def sequences(self, length: int, count: int, stream: int) -> torch.Tensor:
        """``[count, length]`` token ids from the study's data source, fixed by (data seed, stream, length)."""
        return token_sequences(self.definition.data.source, count, length, self.definition.data_seed * 1000 + stream,
                               teacher=self.teacher, tokenizer=self.tokenizer).to(self.device)

    def training_documents(self, length: int, count: int) -> torch.Tensor:
        """Token documents for a proxy recipe from a built-in source (drawn once per process, apart from the
        held-out stream), on the CPU."""
        key = (length, count)
        if key not in self._documents:
            self._documents[key] = self.sequences(length, count, stream=-1).cpu()
        return self._documents[key]

    # ----------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def heldout_scores(self, student: Any, batch: int = 4) -> tuple[float, float]:
        """Mean per-token KL(teacher || student) and the student's next-token cross-entropy on the held-out set."""
        chunks = self.heldout.split(batch)
        cached = self._teacher_logprobs
        keep: list[torch.Tensor] | None = [] if cached is None and \
            self.heldout.numel() * self.teacher.config.vocab_size <= _TEACHER_LOGPROB_LIMIT else None
        kl_sum = ce_sum = 0.0
        kl_n = ce_n = 0
        for index, ids in enumerate(chunks):
            if cached is not None:
                teacher = cached[index]
            else:
                teacher = self.teacher(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
            student_lp = student(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
            kl = (teacher.exp() * (teacher - student_lp)).sum(-1)
            ce = -student_lp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
            kl_sum += kl.sum().item()
            ce_sum += ce.sum().item()
            kl_n += kl.numel()
            ce_n += ce.numel()
            if keep is not None:
                keep.append(teacher)
        if keep is not None:
            self._teacher_logprobs = keep
        return kl_sum / kl_n, ce_sum / ce_n

    def probe_score(self, model: Any, length: int, samples: int) -> float | None:
        """The study's probes at one length on ``model`` (``probe_accuracy@length``), or None without probes."""
        config = self.definition.probes
        if not length or config.kind == "none":
            return None
        probes = probe_class(config.kind)(config.model_copy(update={"lengths": [length], "samples": samples}),
                                          self.definition)
        metrics = probes(TrialContext(self, [], self.definition.seed, -1), model).metrics
        value = metrics.get(f"probe_accuracy@{length}", metrics.get("probe_accuracy"))
        return float(value) if value is not None else None

    @torch.no_grad()
    def agreement(self, model: Any, length: int, samples: int, batch: int = 4) -> float:
        ids_all = self.sequences(length, samples, stream=length)
        start = length - max(1, length // 4)
        hits = total = 0
        for ids in ids_all.split(batch):
            want = self.teacher(input_ids=ids, use_cache=False).logits[:, start:].argmax(-1)
            got = model(input_ids=ids, use_cache=False).logits[:, start:].argmax(-1)
            hits += (want == got).sum().item()
            total += want.numel()
        return hits / total


