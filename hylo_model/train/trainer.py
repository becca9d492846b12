"""``run_recipe``: the staged trainer behind ``hylo-search train`` / ``promote`` and the search's proxy objective.

One process, one GPU or many (``accelerate launch``, DDP): every process builds the same global batch from the
same deterministic stream and takes its slice; each micro-batch's loss is a token sum scaled by
``processes / tokens in the global batch``, so after DDP averages the gradients the update equals one process
running the whole global batch (up to float summation order). The teacher runs frozen under no_grad outside the
DDP module; only the student's trainable groups get gradients. bf16 autocast on GPUs, float32 on CPUs; the
student's master weights stay float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn

from ..config import HyLoConfig
from ..layout import Layout
from ..model import HyLoForCausalLM
from .checkpoint import CheckpointRef, RunDir, load_weights
from .data import (
    DataError,
    DocumentStream,
    PackedStream,
    Rows,
    Tokenize,
    eval_rows,
    register_documents,
    release_documents,
)
from .launch import (
    content_digest,
    describe_world,
    enable_checkpointing,
    load_teacher,
    make_accelerator,
    teacher_tokenizer,
    trackers,
)
from .progress import Progress, StepLog
from .recipe import AlignStage, LongStage, Recipe, RecipeError, load_recipe
from .results import StageResult, StageState, StepInfo, TrainResult, stage_summary
from .rope import check_rope_parameters, restore_teacher_rope, set_rope_parameters, set_teacher_rope
from .stages import (
    AlignObjective,
    DistillObjective,
    converted_layers,
    evaluate,
    long_stage_rope,
    lr_factor,
    make_objective,
    make_optimizer,
    next_token_labels,
    rope_warning,
)


class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss or gradient stopped a stage; the last good checkpoint is kept."""


def run_recipe(
    teacher: nn.Module | str | os.PathLike,
    student: HyLoForCausalLM | Layout | str | os.PathLike,
    recipe: Recipe | dict | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    tokenizer: Any | None = None,
    data: Any | None = None,
    accelerator: Any | None = None,
    progress: str = "auto",
    on_step: Callable[[StepInfo], None] | None = None,
    resume: bool = True,
    metadata: dict[str, Any] | None = None,
    tokens: int | None = None,
    seed: int | None = None,
    log_with: str | list[str] | None = "auto",
) -> TrainResult:
    """Train ``student`` from ``teacher`` through the recipe's stages and return per-stage losses and held-out
    metrics (``result.heldout_kl`` is the final held-out KL).

    ``teacher``: a transformers Llama/Qwen2/Qwen3 model (or a HyLo model), a directory or a hub id; it is moved to
    the accelerator's device and cast to the runtime's teacher dtype in place. ``student``: a HyLo model (trained
    in place, in float32), a saved HyLo directory, or a layout (``"A,L128,M,G"`` or a :class:`Layout`) upcycled
    from the teacher with the recipe's ``student`` options. ``recipe``: a path, a shipped recipe name, a mapping
    or a :class:`Recipe`; ``tokens`` rescales it to about that many tokens over all stages and ``seed`` replaces its
    seed (the proxy: the same recipe, smaller). ``data`` replaces the recipe-level data: a DataConfig or mapping,
    a path / folder / glob or ``hf:DATASET[:CONFIG]`` (or a list of them), or token documents in memory (a
    LongTensor ``[N, T]`` or lists of ids, one document per row).
    ``tokenizer`` defaults to the teacher directory's. ``out_dir``: checkpoints, metrics and the final model;
    rerunning with the same arguments resumes from the newest checkpoint (None: nothing is written — the proxy).
    ``metadata`` is stored in ``out_dir/run.json`` (e.g. where a promoted layout came from). ``on_step`` is
    called after every optimizer step (see :class:`StepInfo`); an exception it raises stops the run (a search can
    prune a trial this way). ``log_with``: experiment trackers (:func:`trackers`; the default is TensorBoard when
    installed) that receive every step's losses, rates and held-out scores, with local logs under
    ``out_dir/tracking/`` (only with an ``out_dir``, and only when the trainer makes the accelerator).
    Bad inputs raise ValueError subclasses (:class:`RecipeError`, :class:`DataError`, RunMismatchError) before
    anything is written.
    """
    memory_key = None
    if isinstance(data, torch.Tensor) or (isinstance(data, (list, tuple)) and data
                                          and not isinstance(data[0], (str, os.PathLike))):
        memory_key = register_documents(data)
        data = [memory_key]
    try:
        recipe = load_recipe(recipe)
        if tokens is not None:
            recipe = recipe.with_budget(tokens)
        if seed is not None:
            recipe = recipe.with_seed(seed)
        return _Trainer(teacher, student, recipe, out_dir, tokenizer, data, accelerator, progress, on_step, resume,
                        metadata, log_with).run()
    finally:
        if memory_key is not None:
            release_documents(memory_key)


class _Trainer:
    def __init__(self, teacher, student, recipe, out_dir, tokenizer, data, accelerator, progress, on_step, resume,
                 metadata, log_with="auto"):
        self.metadata = metadata or {}
        self.recipe = load_recipe(recipe)
        if data is not None:
            self.recipe = self.recipe.with_data(data)
        self.names = self.recipe.stage_names()
        runtime = self.recipe.runtime
        self.log_with = trackers(log_with) if out_dir is not None and accelerator is None else []
        self.acc = accelerator or make_accelerator(runtime, self.log_with,
                                                   Path(out_dir) / "tracking" if self.log_with else None)
        self.device = self.acc.device
        cuda = self.device.type == "cuda"
        self.teacher_dtype = {"auto": torch.bfloat16 if cuda else torch.float32, "bfloat16": torch.bfloat16,
                              "float32": torch.float32}[runtime.teacher_dtype]
        self.teacher, self.teacher_name = load_teacher(teacher, self.teacher_dtype)
        self.tokenizer = tokenizer if tokenizer is not None else teacher_tokenizer(teacher)
        self.student_spec = student
        self.run_dir = RunDir(out_dir, self.acc) if out_dir is not None else None
        self.progress = Progress(progress, self.acc.is_main_process, runtime.log_every)
        self.on_step = on_step
        self.resume = resume
        self.last_checkpoint: Path | None = None
        self._teacher_rope_saved: dict[str, Any] | None = None
        self._last_eval: tuple[Any, dict[str, Any]] | None = None
        self.rope_notes: dict[int, list[str]] = {}

    # Setup: everything here may raise on bad input; nothing is written before `begin`.
    def _setup(self) -> tuple[dict[str, Any] | None, CheckpointRef | None]:
        self.teacher.requires_grad_(False).eval()
        if self.teacher.device != self.device or self.teacher.dtype != self.teacher_dtype:
            self.teacher.to(self.device, self.teacher_dtype)
            if hasattr(self.teacher.model, "rotary_emb"):
                set_teacher_rope(self.teacher, self.teacher.config.rope_parameters)  # float32 frequencies again
        spec = self.student_spec
        is_model = isinstance(spec, HyLoForCausalLM)
        is_dir = isinstance(spec, (str, os.PathLike)) and not isinstance(spec, Layout) and Path(spec).is_dir()
        if is_model:
            layout = str(spec.config.hylo_layout)
        elif is_dir:
            layout = str(HyLoConfig.from_pretrained(spec).hylo_layout)
        else:
            try:
                layout = str(Layout.parse(spec, self.teacher.config.num_hidden_layers))
            except ValueError as error:
                raise RecipeError(f"student layout: {error}") from None
        identity = {
            "recipe": self.recipe.fingerprint(),
            "teacher": self.teacher_name,
            "teacher_digest": content_digest(self.teacher) if self.run_dir is not None else "",
            "layout": layout,
            "student": (content_digest(spec) if is_model else str(Path(spec).resolve()) if is_dir else
                        self.recipe.student.model_dump_json()) if self.run_dir is not None else "",
        }
        self.fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.layout = layout
        meta = self.run_dir.check(self.fingerprint) if self.run_dir is not None else None
        ref = self.run_dir.latest() if (meta is not None and self.resume) else None
        self.student = self._build_student(ref)
        self.original_rope = (meta or {}).get("original_rope") or dict(self.student.config.rope_parameters)
        self.original_max_positions = (meta or {}).get("original_max_positions") or \
            self.student.config.max_position_embeddings
        self._preflight()
        return meta, ref

    def _build_student(self, ref: CheckpointRef | None) -> HyLoForCausalLM:
        spec = self.student_spec
        if isinstance(spec, HyLoForCausalLM):
            student = spec
        elif isinstance(spec, (str, os.PathLike)) and not isinstance(spec, Layout) and Path(spec).is_dir():
            student = HyLoForCausalLM.from_pretrained(spec, dtype=torch.float32)
        elif ref is not None:
            # Resuming: the checkpoint's weights replace the init, so skip the upcycling (SVDs at 1.7B).
            with torch.device(self.device):
                student = HyLoForCausalLM(HyLoConfig.from_pretrained(ref.path)).float()
        else:
            from ..upcycle import upcycle

            options = self.recipe.student.model_dump()
            student = upcycle(self.teacher, self.layout, seed=options.pop("seed"), init=options.pop("init"),
                              dtype=torch.float32, device=self.device,
                              **{k: v for k, v in options.items() if v is not None})
        return student.to(self.device, torch.float32)

    def _preflight(self) -> None:
        recipe, world = self.recipe, self.acc.num_processes
        self.tokenize: dict[int, Tokenize] = {}
        self.eval_sets: dict[int, Rows] = {}
        checked: set[str] = set()
        vocab = self.student.config.vocab_size
        for index, stage in enumerate(recipe.stages):
            where = f"{recipe.source}: field 'stages[{index}]"
            data = recipe.stage_data(index)
            if data is None:
                raise RecipeError(f"{recipe.source}: field 'data': missing; stage {self.names[index]!r} has no data "
                                  "(give the recipe a 'data' section, the stage its own, or pass data=/--data)")
            if stage.batch_size % world or (stage.batch_size // world) % (stage.micro_batch_size or 1):
                raise RecipeError(f"{where}.batch_size': {stage.batch_size} sequences do not split into "
                                  f"{world} processes × micro_batch_size {stage.micro_batch_size or 1}")
            if isinstance(stage, LongStage) and stage.rope is not None:
                try:
                    check_rope_parameters(self.student.config, long_stage_rope(stage, self.original_max_positions), stage.seq_len)
                except ValueError as error:
                    raise RecipeError(f"{where}.rope': {error}") from None
                note = rope_warning(self.student.config, self.original_rope, self.original_max_positions, stage)
                if note:
                    self.rope_notes[index] = [note]
                    self.progress.message(f"[{self.names[index]}] warning: {note}")
            if any(s.tokens_field is None for s in data.sources) and self.tokenizer is None:
                raise DataError(f"stage {self.names[index]!r}: text data needs a tokenizer and the teacher has none; "
                                "pass tokenizer= (or --tokenizer), or use pre-tokenized data (tokens_field)")
            prefix = "data" if stage.data is None else f"stages[{index}].data"
            self.tokenize[index] = Tokenize(self.tokenizer, data.add_bos)
            docs = DocumentStream(data, recipe.resolve_path, recipe.seed, "eval", loop=False, where=prefix,
                                  split_seed=recipe.split_seed)
            rows = eval_rows(docs, self.tokenize[index], stage.seq_len, recipe.eval.sequences)
            if int(rows.input_ids.max()) >= vocab:
                raise DataError(f"{prefix}: token id {int(rows.input_ids.max())} >= the model's vocab_size {vocab}: "
                                "the tokenizer does not belong to this teacher")
            self.eval_sets[index] = rows
            key = data.model_dump_json()
            if key not in checked:
                next(DocumentStream(data, recipe.resolve_path, recipe.seed, "train", loop=True, where=prefix,
                                    split_seed=recipe.split_seed))
                checked.add(key)

    # The run.
    def run(self) -> TrainResult:
        self.progress.message(describe_world(self.acc))
        meta, ref = self._setup()
        if self.run_dir is not None:
            stored = self.run_dir.result() if meta is not None and self.resume else None
            if stored is not None:
                self._apply_rope(len(self.recipe.stages) - 1, teacher=False)
                load_weights(self.student, self.run_dir.root / "final")
                self.progress.message(f"{self.run_dir.root}: this run is already complete")
                return TrainResult([StageResult.from_dict(s) for s in stored["stages"]], self.student,
                                   self.run_dir.root, self.recipe.name)
            self.run_dir.begin({
                "fingerprint": self.fingerprint, "recipe": self.recipe.name, "recipe_source": self.recipe.source,
                "teacher": self.teacher_name, "layout": self.layout, "original_rope": self.original_rope,
                "original_max_positions": self.original_max_positions, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "metadata": self.metadata,
            }, yaml.safe_dump(self.recipe.model_dump(mode="json", exclude_none=True), sort_keys=False))
        if self.log_with:
            self.acc.init_trackers(self.recipe.name or "hylo", config={
                "recipe": self.recipe.name or "", "teacher": self.teacher_name, "layout": self.layout,
                "seed": self.recipe.seed, "stages": ",".join(self.names), "processes": self.acc.num_processes})
        offsets = [sum(s.num_steps for s in self.recipe.stages[:i]) for i in range(len(self.recipe.stages))]
        self.log = StepLog(self.run_dir, self.progress, self.acc, bool(self.log_with), offsets)
        try:
            return self._train(ref)
        finally:
            for tracker in self.acc.trackers if self.log_with else ():
                tracker.finish()  # not acc.end_training(): that also ends the process group its caller may use

    def _train(self, ref: CheckpointRef | None) -> TrainResult:
        torch.manual_seed(self.recipe.seed)
        if self.recipe.runtime.gradient_checkpointing:
            enable_checkpointing(self.student)
        completed: list[StageResult] = []
        start, resume_ref, doc_state = 0, None, None
        if ref is not None:
            state = ref.state()
            load_weights(self.student, ref.path)
            self.run_dir.truncate_metrics(ref.stage_index, ref.step)
            completed = [StageResult.from_dict(s) for s in state["completed"]]
            doc_state = state.get("recipe_doc_state")
            self.last_checkpoint = ref.path
            if state["stage_done"]:
                completed.append(StageResult.from_dict(state["result"]))
                start = ref.stage_index + 1
            else:
                start, resume_ref = ref.stage_index, ref
            self.progress.message(f"resuming from {ref.path}")
        try:
            for index in range(start, len(self.recipe.stages)):
                result, doc_state = self._stage(index, resume_ref if index == start else None, completed, doc_state)
                completed.append(result)
        finally:
            if self._teacher_rope_saved is not None:
                restore_teacher_rope(self.teacher, self._teacher_rope_saved)
                self._teacher_rope_saved = None
        # The final model carries the last stage's RoPE (also when a rerun found every stage already done).
        self._apply_rope(len(self.recipe.stages) - 1, teacher=False)
        result = TrainResult(completed, self.student, self.run_dir.root if self.run_dir else None, self.recipe.name)
        if self.run_dir is not None:
            provenance = dict(self.student.config.hylo_provenance or {})
            provenance["training"] = {"recipe": self.recipe.name, "fingerprint": self.fingerprint,
                                      "stages": [{"name": s.name, "kind": s.kind, "steps": s.steps,
                                                  "tokens": s.tokens} for s in completed]}
            self.student.config.hylo_provenance = provenance
            self.run_dir.write_final(self.student, self.tokenizer, result.to_dict())
        return result

    def _apply_rope(self, index: int, teacher: bool = True) -> None:
        """RoPE in force for stage ``index``: the last ``rope`` given by a long stage up to it, else the original
        (for the teacher too, unless ``teacher`` is False)."""
        student_rope, teacher_rope, max_pos = self.original_rope, None, self.original_max_positions
        for stage in self.recipe.stages[:index + 1]:
            if isinstance(stage, LongStage):
                max_pos = max(max_pos, stage.seq_len)
                if stage.rope is not None:
                    student_rope = long_stage_rope(stage, self.original_max_positions)
                    if stage.rope_teacher:
                        teacher_rope = student_rope
        if student_rope.get("rope_type") == "dynamic":
            # Dynamic NTK scaling starts beyond max_position_embeddings (transformers reads it as the pretraining
            # length): raised to the stage's length, it would scale nothing the stage trains on.
            max_pos = self.original_max_positions
        config = self.student.config
        if config.rope_parameters != check_rope_parameters(config, student_rope, max_pos) or \
                config.max_position_embeddings != max_pos:
            config.max_position_embeddings = max_pos
            set_rope_parameters(self.student, student_rope, max_pos)
        if not teacher:
            return
        if teacher_rope is not None:
            if self._teacher_rope_saved is None:
                self._teacher_rope_saved = set_teacher_rope(self.teacher, teacher_rope, max_pos)
            else:
                set_teacher_rope(self.teacher, teacher_rope, max_pos)
        elif self._teacher_rope_saved is not None:
            restore_teacher_rope(self.teacher, self._teacher_rope_saved)
            self._teacher_rope_saved = None

    def _evaluate(self, index: int, stage: Any, layers: list[int]) -> dict[str, Any]:
        align = (stage.target, stage.loss) if isinstance(stage, AlignStage) else None
        key = (stage.seq_len, self.recipe.stage_data(index).model_dump_json(),
               json.dumps(self.student.config.rope_parameters, sort_keys=True), align)
        if self._last_eval is not None and self._last_eval[0] == key:
            return self._last_eval[1]
        result = evaluate(self.student, self.teacher, self.eval_sets[index].input_ids, self.eval_sets[index].lengths,
                          micro_batch_size=self.recipe.eval.micro_batch_size, layers=layers if align else [],
                          align=align, chunk=getattr(stage, "kl_chunk", 1024), device=self.device,
                          autocast=self.acc.autocast)
        self._last_eval = (key, result)
        return result

    def _stage(self, index: int, ref: CheckpointRef | None, completed: list[StageResult],
               doc_state: dict[str, Any] | None) -> tuple[StageResult, dict[str, Any] | None]:
        stage, name = self.recipe.stages[index], self.names[index]
        steps = stage.num_steps
        self._apply_rope(index)
        layers = converted_layers(self.student)
        optimizer, notes = make_optimizer(self.student, stage)
        notes = self.rope_notes.get(index, []) + notes
        if optimizer is None or (isinstance(stage, AlignStage) and not layers):
            return self._skipped(index, layers, notes), doc_state
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
            s, steps, stage.warmup(), stage.schedule, stage.min_lr_ratio))
        objective = make_objective(stage, self.student, layers)
        self.student.train()
        prepared, optimizer = self.acc.prepare(objective, optimizer)
        stream = self._stream(index, doc_state)
        if ref is not None:
            self.run_dir.restore(ref, optimizer, scheduler)
            state = StageState.from_checkpoint(ref.state(), stream)
        else:
            state = StageState(eval_before=self._evaluate(index, stage, layers))
        self.progress.start_stage(name, steps, state.step)
        every = self.recipe.runtime.checkpoint_every
        try:
            for step in range(state.step + 1, steps + 1):
                began = time.perf_counter()
                rows = stream.next_rows(stage.batch_size)
                loss, metrics, grad_norm = self._step(stage, objective, prepared, rows)
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    self._stop_non_finite(name, index, step, loss, grad_norm)
                rates = {g["name"].split("/")[0]: g["lr"] for g in optimizer.param_groups}  # this step's rates
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self._last_eval = None  # the weights changed
                elapsed = time.perf_counter() - began
                batch_tokens = stage.batch_size * stage.seq_len
                state.advance(step, loss, metrics, batch_tokens, elapsed)
                self.log.step(name, index, stage.kind, step, loss, metrics, grad_norm, rates, state.tokens,
                              batch_tokens / elapsed)
                if self.recipe.eval.every and step % self.recipe.eval.every == 0 and step < steps:
                    self.log.evaluation(name, index, step, self._evaluate(index, stage, layers))
                if self.run_dir is not None and every and step % every == 0 and step < steps:
                    self.last_checkpoint = self.run_dir.save(index, name, step, self.student, state.checkpoint(
                        index, name, steps, stream, self.fingerprint, completed, doc_state), optimizer, scheduler)
                    self.run_dir.prune(self.recipe.runtime.keep_checkpoints)
                if self.on_step is not None:
                    self.on_step(StepInfo(name, index, stage.kind, step, steps, loss, metrics, rates, state.tokens,
                                          batch_tokens / elapsed, self.student))
        finally:
            self.progress.end_stage()
            self.acc.free_memory()
        eval_after = self._evaluate(index, stage, layers)
        self.log.heldout(name, index, steps, eval_after)
        result = StageResult(name, stage.kind, steps, state.tokens, state.seconds, state.losses, state.metrics,
                             state.eval_before, eval_after, notes)
        if stage.data is None:
            doc_state = stream.document_state()
        if self.run_dir is not None:
            self.last_checkpoint = self.run_dir.save(index, name, steps, self.student, StageState.finished(
                index, result, self.fingerprint, completed, doc_state))
            self.run_dir.prune(self.recipe.runtime.keep_checkpoints)
        self.progress.message(stage_summary(result))
        return result, doc_state

    def _skipped(self, index: int, layers: list[int], notes: list[str]) -> StageResult:
        """A stage with nothing to train, still scored: a layout with nothing to train (the teacher itself) reports
        its held-out KL."""
        stage, name = self.recipe.stages[index], self.names[index]
        notes.append("skipped: nothing to train (no converted layers or no parameters in the named groups)")
        self.progress.message(f"[{name}] " + "; ".join(notes))
        scores = self._evaluate(index, stage, layers)
        return StageResult(name, stage.kind, 0, 0, 0.0, eval_before=scores, eval_after=scores, notes=notes)

    def _stream(self, index: int, doc_state: dict[str, Any] | None) -> PackedStream:
        """Stage ``index``'s training rows; a stage on the recipe-level corpus continues it where the previous
        stage stopped (``doc_state``)."""
        stage = self.recipe.stages[index]
        where = "data" if stage.data is None else f"stages[{index}].data"
        docs = DocumentStream(self.recipe.stage_data(index), self.recipe.resolve_path, self.recipe.seed, "train",
                              loop=True, where=where, split_seed=self.recipe.split_seed)
        if stage.data is None and doc_state is not None:
            docs.load_state_dict(doc_state)
        return PackedStream(docs, self.tokenize[index], stage.seq_len, seed=self.recipe.seed * 1000 + index)

    def _stop_non_finite(self, name: str, index: int, step: int, loss: float, grad_norm: float) -> None:
        where = (f"the last good checkpoint {self.last_checkpoint} is kept; rerunning resumes from it"
                 if self.last_checkpoint else "no checkpoint was written before it")
        what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
        raise NonFiniteLossError(
            f"stage {name!r} step {step}: {what} is {value} (not finite), stage stopped; {where}. "
            f"Lower the learning rate (stages[{index}].lr) or check the data.")

    def _step(self, stage: Any, objective: AlignObjective | DistillObjective, prepared: nn.Module, rows: Rows
              ) -> tuple[float, dict[str, float], float]:
        """One optimizer step's forward/backward over the global batch ``rows`` (this process takes its slice);
        returns the global loss, its terms, and the gradient norm (after clipping is applied to the grads).
        ``objective`` runs the teacher for each micro-batch; ``prepared`` is it wrapped by accelerate (DDP)."""
        acc, world = self.acc, self.acc.num_processes
        per = len(rows) // world
        local = rows.slice(acc.process_index * per, (acc.process_index + 1) * per)
        micro = stage.micro_batch_size or per
        labels_all = next_token_labels(rows.input_ids, rows.lengths)
        n_kl = max(int(rows.loss_mask().sum()), 1)
        n_ce = max(int((labels_all >= 0).sum()), 1)
        mask = local.loss_mask()
        labels = next_token_labels(local.input_ids, local.lengths)
        kl_rows = mask.float() * (world / n_kl)
        ce_rows = (labels >= 0).float() * (world / n_ce)
        totals = torch.zeros(len(objective.names), dtype=torch.float64)
        count = per // micro
        for k in range(count):
            part = slice(k * micro, (k + 1) * micro)
            ids = local.input_ids[part].to(self.device)
            sync = nullcontext() if k == count - 1 else acc.no_sync(prepared)
            with sync:
                inputs = objective.inputs(self.teacher, ids, kl_rows[part].to(self.device),
                                          ce_rows[part].to(self.device), labels[part].to(self.device))
                loss, out = prepared(*inputs)
                values = objective.terms(loss, out)
                acc.backward(loss)
            totals += torch.stack([v.detach().double().cpu() for v in values])
        reduced = acc.reduce(totals.to(self.device), reduction="sum").cpu() / world if world > 1 else totals
        max_norm = stage.grad_clip if stage.grad_clip > 0 else float("inf")
        grad_norm = float(acc.clip_grad_norm_([p for p in prepared.parameters() if p.requires_grad], max_norm))
        values = dict(zip(objective.names, reduced.tolist()))
        loss = values.pop("loss")
        return loss, objective.report(values), grad_norm


__all__ = ["NonFiniteLossError", "StageResult", "StepInfo", "TrainResult", "enable_checkpointing", "load_teacher",
           "lr_factor", "make_accelerator", "run_recipe", "trackers"]
