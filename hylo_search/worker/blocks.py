"""The per-layer block library: every (layer, token) of a study's space trained once, stored, and reused.

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
(``<key>.<sensitivity key>.json``) and gathered into ``<study>/library.json`` (:mod:`.sensitivity` reads it).

**Assembly.** :meth:`Library.assemble` builds any layout from its blocks without training: the dense weights are
copied from the teacher and each converted layer's mixer is loaded from its block file (the ``assembled`` proxy).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .assembly import library_entries, token_order
from .errors import UsageError
from .executors import run_all
from .layer_cache import MODEL_SOURCES, LayerCache, code_version, load_mixer, save_mixer
from .objectives import recipe_data
from .runs import atomic_write_text
from .sensitivity import TABLE
from .spaces import MIXER_OF_CODE
from .study import StudyDef

LIBRARY_CODE_VERSION = code_version(MODEL_SOURCES + ("train",))


@dataclass
class LibraryTask:
    """One worker's share of the library: the blocks of ``token`` at ``layers`` (plain data, pickled to Ray)."""

    study: dict[str, Any]
    study_dir: str
    token: str
    layers: list[int]
    threads: int | None = None


def align_recipe(definition: StudyDef) -> Any:
    """The library's recipe as it runs: the align stages of ``library.recipe`` (else the proxy's), gradient
    clipping off (layers trained together stay independent), rescaled to ``library.tokens`` when given."""
    from hylo_model.train import RecipeError, load_recipe

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


def _digest(payload: Any, size: int = 32) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:size]


class Library:
    """The block library of one study runtime (``runtime``: definition, study folder, teacher, its fingerprint and
    tokenizer, held-out scoring, probes; see :class:`hylo_search.runtime.StudyRuntime`)."""

    def __init__(self, runtime: Any) -> None:
        definition: StudyDef = runtime.definition
        self.runtime = runtime
        self.root = Path(runtime.study_dir) / "cache" / "library"
        self.probe_length, self.probe_samples = probe_setting(definition)
        self._sensitivity_key = _digest([definition.data.model_dump(mode="json"),
                                         definition.probes.model_dump(mode="json"), self.probe_length,
                                         self.probe_samples, definition.seed], 12)
        self._teacher_probe: float | None = None

    @functools.cached_property
    def init_cache(self) -> LayerCache:
        definition = self.runtime.definition
        return LayerCache(self.root / "init", self.runtime.fingerprint, definition.upcycle.options(), definition.seed)

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
                definition.data.model_dump(mode="json"), self.recipe.model_dump(mode="json", exclude={"data"}),
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

    def missing(self, tokens: list[str]) -> list[int]:
        return [i for i, t in enumerate(tokens) if t != "A" and not self.block_path(i, t).is_file()]

    # --------------------------------------------------------------------------------------------- assembly
    def assemble(self, tokens: list[str]) -> tuple[Any, dict[str, int]]:
        """The student of ``tokens`` from library blocks, no training: ``(model, {"library_blocks": n})``."""
        from hylo_model import upcycle

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
        from hylo_model.train import run_recipe

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
        from safetensors import safe_open

        path = self.block_path(layer, token)
        with safe_open(str(path), "pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("entry", "{}"))
        sensitivity = self.sensitivity_path(layer, token)
        if sensitivity.is_file():
            scores = json.loads(sensitivity.read_text())
        else:
            scores = self._sensitivity(layer, token)
            atomic_write_text(sensitivity, json.dumps(scores))
        return {"layer": layer, "token": token, "mixer": MIXER_OF_CODE[token[0]],
                "rank": int(token[1:]) if token[1:] else None, "key": path.stem, **scores,
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

    def teacher_probe(self) -> float | None:
        """The probe score of the teacher itself (as the all-attention student, which equals it)."""
        if self._teacher_probe is None and self.probe_length:
            student, _ = self.assemble(["A"] * self.runtime.teacher.config.num_hidden_layers)
            self._teacher_probe = self.runtime.probe_score(student, self.probe_length, self.probe_samples)
        return self._teacher_probe


# ------------------------------------------------------------------------------------------------ the driver
@dataclass
class LibrarySummary:
    entries: int
    trained: int
    reused: int
    optimizer_steps: int
    seconds: float
    path: Path
    failures: list[str]


def plan_tasks(entries: list[tuple[int, str]], capacity: int,
               layers_per_task: int | None = None) -> list[tuple[str, list[int]]]:
    """(token, layers) tasks: each token's layers split into chunks of ``layers_per_task``, or by default into
    enough chunks that ``capacity`` workers all have work (one chunk per token when workers are fewer)."""
    by_token: dict[str, list[int]] = {}
    for layer, token in entries:
        by_token.setdefault(token, []).append(layer)
    tasks = []
    for token in sorted(by_token, key=token_order):
        layers = by_token[token]
        chunks = math.ceil(len(layers) / layers_per_task) if layers_per_task else \
            min(len(layers), math.ceil(capacity / len(by_token)))
        bounds = [round(k * len(layers) / chunks) for k in range(chunks + 1)]  # near-equal, in layer order
        tasks += [(token, layers[a:b]) for a, b in zip(bounds, bounds[1:])]
    return tasks


def build_library(loaded: Any, folder: Path, executor: Any, threads: int | None = None,
                  report: Callable[[str, dict[str, Any]], None] | None = None) -> LibrarySummary:
    """Build (or complete) the library of ``loaded`` with ``executor`` and write ``<folder>/library.json``.

    Every task is submitted; a worker trains only the blocks whose file is missing and scores only the missing
    sensitivities, so a complete library costs one teacher load per worker and no training."""

    report = report or (lambda event, info: None)
    align_recipe(loaded.definition)  # a recipe problem is a usage error, before any task
    entries = library_entries(loaded.space)
    tasks = plan_tasks(entries, executor.capacity, loaded.definition.library_config().layers_per_task)
    resolved, study_dir = loaded.resolved(), str(folder.resolve())
    report("library_started", {"entries": len(entries), "tasks": len(tasks)})
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    steps = 0
    work = [LibraryTask(resolved, study_dir, token, layers, threads) for token, layers in tasks]
    for number, record in run_all(executor, work):
        token, layers = tasks[number]
        if record.get("status") != "ok":
            failures.append(f"{token} at layers {layers}: {record.get('failure', 'no result')}")
            continue
        rows += [{**row, "node": record.get("node")} for row in record["rows"]]
        steps += record["optimizer_steps"]
        report("library_task", {"token": token, "layers": layers, "trained": record["trained"],
                                "seconds": record.get("seconds")})
    rows.sort(key=lambda r: (r["layer"], token_order(r["token"])))
    table = {"study": loaded.name, "fingerprint": loaded.fingerprint(), "teacher": loaded.definition.teacher,
             "target_length": loaded.definition.target_length, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "complete": not failures and len(rows) == len(entries), "rows": rows}
    path = folder / TABLE
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(table, indent=1) + "\n")
    trained = sum(r["trained"] for r in rows)
    return LibrarySummary(len(entries), trained, len(rows) - trained, steps, time.perf_counter() - began, path,
                          failures)
