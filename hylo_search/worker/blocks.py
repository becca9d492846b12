"""The per-layer block library, worker side: every (layer, token) of a study's space trained once, stored, and
reused (the driver side, which plans the tasks and gathers the table, is :mod:`hylo_search.library`).

**Blocks.** For every converted token a layer may take (``L128``, ``M``, ``G``...; attention is the teacher's own),
the mixer is upcycled from the teacher in a layout where only its layer is converted (cached under
``library/init``) and trained by local distillation: the align stage(s) of the library's recipe, which feed it the
teacher's input hidden state of its layer and fit the teacher's output. Layers of one token are trained together in
one worker (one teacher forward per step serves all of them), with gradient clipping off so that each layer's
update depends on its own loss only: a block is the same whichever layers shared its task. Tasks go to the study's
executor (local, or Ray across GPUs and nodes). A block is stored at
``<study>/cache/library/blocks/<key[:2]>/<key>.safetensors`` with its align losses as metadata; the key holds the
teacher's content fingerprint, the layer, the token, the upcycle options, the seed, the study's data, the align
recipe as run, and :data:`LIBRARY_CODE_VERSION` (model, upcycling and training source). Re-running trains only the
blocks whose file is missing.

**Sensitivity.** Each block swapped alone into the teacher (every other layer the teacher's attention): held-out
KL(teacher || student) and cross-entropy on the study's held-out sequences, and the probe drop (the teacher's probe
score minus this one's) at ``library.probe_length`` (default: the study's target length). Stored beside the block
(``<key>.<sensitivity key>.json``) and gathered into ``<study>/library.json`` (:mod:`hylo_search.library.sensitivity` reads it).

**Restore scores** (KL-guided layer selection). Once the blocks exist: the all-linear student of one linear token
(``G``, ``M``), assembled from its aligned blocks, and the same student with one layer restored to the teacher's
attention or to an MLA block; held-out KL(teacher || student) of each (:meth:`Library.restore`). The layers whose
restoration lowers KL most are the ones to keep. A score is cached per assembled layout
(``library/restore/<key[:2]>/<key>.json``), keyed by the keys of the blocks it is made of (which hold the teacher,
data, recipe and code) and the held-out setting, so a changed block or data recomputes it.

**Assembly.** :meth:`Library.assemble` builds any layout from its blocks without training: the dense weights are
copied from the teacher and each converted layer's mixer is loaded from its block file (the ``assembled`` proxy).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from safetensors import safe_open

from hylo_model import upcycle
from hylo_model.layout import parse_token
from hylo_model.train import RecipeError, load_recipe, run_recipe

from .. import paths
from ..define.schema import StudyDef
from ..errors import UsageError
from ..scoring.proxy_kinds import recipe_data
from .converted import MODEL_SOURCES, ConvertedLayers, code_version, load_mixer, save_mixer

LIBRARY_CODE_VERSION = code_version(MODEL_SOURCES + ("train",))


def align_recipe(definition: StudyDef) -> Any:
    """The library's recipe as it runs: the align stages of ``library.recipe`` (else the proxy's), gradient
    clipping off (layers trained together stay independent), rescaled to ``library.tokens`` when given."""
    name = definition.library_recipe()
    if not name:
        raise UsageError(f"study {definition.name}: field 'library.recipe': the block library needs a recipe with an "
                         "align stage (e.g. proxy_tiny), here or in 'proxy.recipe'")
    try:
        recipe = load_recipe(name)
    except RecipeError as error:
        raise UsageError(f"study {definition.name}: field 'library.recipe': {error}") from None
    stages = [s.model_copy(update={"grad_clip": 0.0}) for s in recipe.stages if s.kind == "align"]
    if not stages:
        kinds = ", ".join(s.kind for s in recipe.stages)
        raise UsageError(f"study {definition.name}: field 'library.recipe': recipe {name!r} has no align stage "
                         f"(stages: {kinds}); the block library trains blocks with the align stage")
    recipe = recipe.model_copy(update={"stages": stages})
    tokens = definition.library_config().tokens
    return recipe.with_budget(tokens) if tokens else recipe


def probe_setting(definition: StudyDef) -> tuple[int, int]:
    """(probe length, samples) of the sensitivity probes; length 0 means none."""
    config = definition.library_config()
    length = definition.target_length if config.probe_length is None else config.probe_length
    if definition.probes.kind == "none":
        length = 0
    return length, config.probe_samples or definition.probes.samples


def _data_key(definition: StudyDef) -> dict[str, Any]:
    """The study's data config for cache keys; an unset ``seed`` is left out, so keys made before the field
    existed still match."""
    return definition.data.model_dump(mode="json", exclude_none=True)


def _digest(payload: Any, size: int = 32) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:size]


class Library:
    """The block library of one study runtime (``runtime``: definition, study folder, teacher, its fingerprint and
    tokenizer, held-out scoring, probes; see :class:`hylo_search.worker.runtime.StudyRuntime`)."""

    def __init__(self, runtime: Any) -> None:
        definition: StudyDef = runtime.definition
        self.runtime = runtime
        self.root = Path(runtime.study_dir) / paths.LIBRARY_CACHE
        self.probe_length, self.probe_samples = probe_setting(definition)
        data = _data_key(definition)
        self._sensitivity_key = _digest([data,
                                         definition.probes.model_dump(mode="json"), self.probe_length,
                                         self.probe_samples, definition.seed], 12)
        self._heldout_key = [data, definition.data_seed]
        self._teacher_probe: float | None = None

    @functools.cached_property
    def init_cache(self) -> ConvertedLayers:
        definition = self.runtime.definition
        return ConvertedLayers(self.root / "init", self.runtime.fingerprint, definition.upcycle.options(), definition.seed)

    @property
    def dtype(self) -> Any:
        return next(self.runtime.teacher.parameters()).dtype

    @functools.cached_property
    def recipe(self) -> Any:
        return align_recipe(self.runtime.definition)

    @functools.cached_property
    def _base(self) -> list[Any]:
        definition = self.runtime.definition
        return [self.runtime.fingerprint, definition.upcycle.options(), definition.seed,
                _data_key(definition), self.recipe.model_dump(mode="json", exclude={"data"}),
                LIBRARY_CODE_VERSION]

    # ------------------------------------------------------------------------------------------------ files
    def key(self, layer: int, token: str) -> str:
        return _digest([*self._base, layer, token])

    def block_path(self, layer: int, token: str) -> Path:
        key = self.key(layer, token)
        return self.root / "blocks" / key[:2] / f"{key}.safetensors"

    def sensitivity_path(self, layer: int, token: str) -> Path:
        block = self.block_path(layer, token)
        return block.with_name(f"{block.stem}.{self._sensitivity_key}.json")

    def layout_score_path(self, tokens: list[str]) -> Path:
        """Where the held-out scores of the layout ``tokens`` assembled from blocks are cached."""
        key = _digest([[t if t == "A" else self.key(i, t) for i, t in enumerate(tokens)], self._heldout_key])
        return self.root / "restore" / key[:2] / f"{key}.json"

    def missing(self, tokens: list[str]) -> list[int]:
        return [i for i, t in enumerate(tokens) if t != "A" and not self.block_path(i, t).is_file()]

    # --------------------------------------------------------------------------------------------- assembly
    def assemble(self, tokens: list[str]) -> tuple[Any, dict[str, int]]:
        """The student of ``tokens`` from library blocks, no training: ``(model, {"library_blocks": n})``."""
        missing = self.missing(tokens)
        if missing:
            raise RuntimeError(f"the block library has no block for layer {missing[0]} ({tokens[missing[0]]})"
                               f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}: run "
                               f"`hylo-search library {self.runtime.definition.name}` first")
        definition = self.runtime.definition
        # init="random": no SVD or conversion work, every converted mixer is replaced by its block below.
        student = upcycle(self.runtime.teacher, ",".join(tokens), seed=definition.seed, init="random",
                          **definition.upcycle.options())
        converted = [i for i, t in enumerate(tokens) if t != "A"]
        for i in converted:
            load_mixer(student.model.layers[i].mixer, self.block_path(i, tokens[i]))
        return student, {"library_blocks": len(converted)}

    # ------------------------------------------------------------------------------------------------ build
    def build(self, token: str, layers: list[int]) -> dict[str, Any]:
        """Train the missing blocks of ``token`` at ``layers`` together, then score each block's sensitivity
        where it is missing. Returns ``{"rows": [...], "trained": [...], "optimizer_steps": n}``."""
        todo = [i for i in layers if not self.block_path(i, token).is_file()]
        steps = 0
        if todo:
            steps = self._train(token, todo)
        rows = [self._row(i, token, trained=i in todo) for i in layers]
        return {"rows": rows, "trained": todo, "optimizer_steps": steps}

    def _train(self, token: str, layers: list[int]) -> int:
        runtime = self.runtime
        teacher = runtime.teacher
        count = teacher.config.num_hidden_layers
        for i in layers:
            # Each block starts from its conversion in a layout where only its layer is converted: the random
            # parts of a Mamba2/GDN mixer depend on the layers built before it, and a block must not depend on
            # the layers that happen to share its task (nor on the trials' layer cache).
            if not self.init_cache.path(self.init_cache.key(i, token, self.dtype)).is_file():
                self.init_cache.build(teacher, ["A"] * i + [token] + ["A"] * (count - i - 1))
        tokens = ["A"] * count
        for i in layers:
            tokens[i] = token
        student, _ = self.init_cache.build(teacher, tokens)
        began = time.perf_counter()
        result = run_recipe(runtime.teacher, student, self.recipe, None, tokenizer=runtime.tokenizer,
                            data=recipe_data(runtime, self.recipe.total_tokens()), progress="off",
                            seed=runtime.definition.seed)
        seconds = (time.perf_counter() - began) / len(layers)
        before = result.stages[0].eval_before.get("layer_loss", {})
        after = result.stages[-1].eval_after.get("layer_loss", {})
        steps = sum(s.steps for s in result.stages)
        train_tokens = sum(s.tokens for s in result.stages)
        for i in layers:
            meta = {"layer": i, "token": token, "align_before": before.get(i), "align_after": after.get(i),
                    "steps": steps, "tokens": train_tokens, "seconds": round(seconds, 4),
                    "layers_trained_together": len(layers)}
            save_mixer(student.model.layers[i].mixer, self.block_path(i, token), {"entry": json.dumps(meta)})
        return steps

    def _row(self, layer: int, token: str, trained: bool) -> dict[str, Any]:
        path = self.block_path(layer, token)
        with safe_open(str(path), "pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("entry", "{}"))
        sensitivity = self.sensitivity_path(layer, token)
        if sensitivity.is_file():
            scores = json.loads(sensitivity.read_text())
        else:
            scores = self._sensitivity(layer, token)
            paths.atomic_write_text(sensitivity, json.dumps(scores))
        mixer, rank = parse_token(token)
        return {"layer": layer, "token": token, "mixer": mixer, "rank": rank, "key": path.stem, **scores,
                "align_before": meta.get("align_before"), "align_after": meta.get("align_after"),
                "train_steps": meta.get("steps"), "train_tokens": meta.get("tokens"),
                "train_s": meta.get("seconds"), "trained": trained}

    def _sensitivity(self, layer: int, token: str) -> dict[str, Any]:
        """The teacher with only ``layer`` replaced by its block: held-out KL / CE and the probe drop."""
        began = time.perf_counter()
        tokens = ["A"] * self.runtime.teacher.config.num_hidden_layers
        tokens[layer] = token
        student, _ = self.assemble(tokens)
        kl, ce = self.runtime.heldout_scores(student)
        probe = self.runtime.probe_score(student, self.probe_length, self.probe_samples)
        teacher = self.teacher_probe()
        drop = teacher - probe if probe is not None and teacher is not None else None
        return {"kl": kl, "ce": ce, "probe": probe, "teacher_probe": teacher, "probe_drop": drop,
                "probe_length": self.probe_length or None, "sensitivity_s": round(time.perf_counter() - began, 4)}

    def restore(self, linear: str, keep: str, base: list[str], layers: list[int]) -> dict[str, Any]:
        """KL-guided scores: held-out KL(teacher || student) of ``base`` (the all-``linear`` layout) and of ``base``
        with each of ``layers`` alone restored to ``keep`` (``A``: the teacher's attention; an MLA token: its
        block). Returns ``{"rows": [{layer, linear, keep, kl_all, kl_restored, kl_drop, ce_all, ce_restored}],
        "scored": layouts scored now (not read from the cache)}``."""
        kl_all, ce_all, scored = self._layout_scores(base)
        rows = []
        for i in layers:
            tokens = list(base)
            tokens[i] = keep
            kl, ce, fresh = self._layout_scores(tokens)
            scored += fresh
            rows.append({"layer": i, "linear": linear, "keep": keep, "kl_all": kl_all, "kl_restored": kl,
                         "kl_drop": kl_all - kl, "ce_all": ce_all, "ce_restored": ce})
        return {"rows": rows, "scored": scored}

    def _layout_scores(self, tokens: list[str]) -> tuple[float, float, int]:
        """(held-out KL, CE, 1 if scored now else 0) of ``tokens`` assembled from blocks."""
        path = self.layout_score_path(tokens)
        if path.is_file():
            cached = json.loads(path.read_text())
            return cached["kl"], cached["ce"], 0
        student, _ = self.assemble(tokens)
        kl, ce = self.runtime.heldout_scores(student)
        paths.atomic_write_text(path, json.dumps({"tokens": tokens, "kl": kl, "ce": ce}))
        return kl, ce, 1

    def teacher_probe(self) -> float | None:
        """The probe score of the teacher itself (as the all-attention student, which equals it)."""
        if self._teacher_probe is None and self.probe_length:
            student, _ = self.assemble(["A"] * self.runtime.teacher.config.num_hidden_layers)
            self._teacher_probe = self.runtime.probe_score(student, self.probe_length, self.probe_samples)
        return self._teacher_probe


