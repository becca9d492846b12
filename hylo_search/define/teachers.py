"""Teachers: a hub id, a local directory, or a built-in tiny model created locally (``builtin:NAME``).

Two things are needed of a teacher, at different times:

* its **config** (dimensions only) — to validate a study, compile its space and compute exact costs. This never
  downloads weights: a local directory's config.json, the Hugging Face cache, a snapshot of the shipped studies'
  teacher configs (:data:`KNOWN_CONFIGS`, so validation and ``--dry-run`` work offline), then the hub (config only);
* its **weights** — when trials run: :func:`teacher_directory` gives a local directory with safetensors.

Built-in teachers (:data:`BUILTIN_TEACHERS`): ``builtin:tiny`` is the embedded trained teacher shipped with the
package (``hylo_search/assets/tiny_teacher``: safetensors, tokenizer, ``training.json``; rebuilt by
``python -m hylo_search.tiny_teacher``, see :mod:`hylo_search.tiny_teacher`); ``builtin:tiny-random`` (what most
tests use) is a tiny random Qwen3 with a byte-level tokenizer, built deterministically from a seed on first use and
cached under the study's cache folder (outside a study: this user's cache, :func:`user_cache_dir`, never a shared
temporary folder another user could prepare). :func:`register_builtin_teacher` adds more.
:func:`check_teacher_weights` reads a local teacher's safetensors headers, so missing, truncated or corrupt weights
are one clear line before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinTeacher:
    """A teacher that needs no download. Either shipped as a ``directory`` (config, safetensors, tokenizer), or
    built locally: ``build(directory, spec)`` writes those files, from ``config`` (a transformers config as a dict
    with ``model_type``); ``version`` is part of the built copy's cache key — bump it when the output changes."""

    config: dict[str, Any] | None = None
    build: Callable[[Path, "BuiltinTeacher"], None] | None = None
    version: str = "1"
    seed: int = 0
    description: str = ""
    directory: Path | None = None
    not_built: str = ""  # the one line shown when a shipped directory has its config but not yet its weights


def _tiny_qwen3(layers: int, hidden: int = 64, heads: int = 4, kv_heads: int = 2, max_positions: int = 2048,
                intermediate: int = 128) -> dict[str, Any]:
    return dict(model_type="qwen3", vocab_size=BYTE_VOCAB, hidden_size=hidden, intermediate_size=intermediate,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                head_dim=hidden // heads, max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=256, eos_token_id=257, pad_token_id=258)


def build_random_teacher(directory: Path, spec: BuiltinTeacher) -> None:
    """A random transformers model from ``spec.config`` (weights with std 0.05 and norm gains in [0.5, 1.5], so
    attention is far from uniform and conversions differ measurably) plus the byte-level tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(spec.config)
    config = AutoConfig.for_model(values.pop("model_type"), initializer_range=0.05, **values)
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config).float().eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.uniform_(0.5, 1.5)
    model.save_pretrained(directory, safe_serialization=True)
    byte_tokenizer().save_pretrained(directory)


BYTE_VOCAB = 260  # 256 bytes + <|bos|>, <|eos|>, <|pad|>, one spare (a multiple of 4)

BUILTIN_TEACHERS: dict[str, BuiltinTeacher] = {
    "tiny": BuiltinTeacher(directory=Path(__file__).parents[1] / "assets" / "tiny_teacher",
                           description="the embedded trained tiny Llama (python -m hylo_search.tiny_teacher)"),
    "tiny-random": BuiltinTeacher(_tiny_qwen3(layers=4, max_positions=1024), build_random_teacher,
                                  description="random 4-layer Qwen3 (d 64) for tests"),
    "small": BuiltinTeacher(directory=Path(__file__).parents[1] / "assets" / "small_teacher",
                            description="10-layer Llama trained on Python code (python -m hylo_search.small_teacher)",
                            not_built="builtin:small is not built yet: run python -m hylo_search.small_teacher on "
                                      "a GPU"),
}


def register_builtin_teacher(name: str, teacher: BuiltinTeacher) -> None:
    """Add or replace ``builtin:NAME``."""
    BUILTIN_TEACHERS[name] = teacher


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (ids 0-255 are bytes; 256 bos, 257 eos, 258 pad), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    vocab.update({token: 256 + i for i, token in enumerate(specials)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=specials[0], eos_token=specials[1],
                                   pad_token=specials[2])


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel pre-tokenizers use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


# Config snapshots of the shipped studies' teachers (their hub config.json, the fields upcycling reads), so
# studies validate and dry-run offline. Weights are always fetched from the hub when trials run.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-1.7B": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=False,
        bos_token_id=151643, eos_token_id=151645),
    "Qwen/Qwen2.5-3B": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False, sliding_window=None,
        bos_token_id=151643, eos_token_id=151643),
    "meta-llama/Llama-3.2-1B": dict(
        model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "meta-llama/Llama-3.2-3B": dict(
        model_type="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}


def is_builtin(teacher: str) -> bool:
    return teacher.startswith(BUILTIN_PREFIX)


def builtin_spec(teacher: str) -> BuiltinTeacher:
    name = teacher[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_TEACHERS:
        raise UsageError(f"unknown built-in teacher {teacher!r}; allowed: "
                         f"{', '.join(BUILTIN_PREFIX + n for n in BUILTIN_TEACHERS)}")  # registration order
    return BUILTIN_TEACHERS[name]


def teacher_config(teacher: str) -> Any:
    """The teacher's transformers config, without downloading weights (see the module docstring for the order)."""
    from transformers import AutoConfig

    def from_values(values: dict[str, Any]) -> Any:
        values = dict(values)
        return AutoConfig.for_model(values.pop("model_type"), **values)

    if is_builtin(teacher):
        spec = builtin_spec(teacher)
        if spec.directory is not None:
            try:
                return AutoConfig.from_pretrained(spec.directory)
            except (OSError, ValueError) as error:
                raise UsageError(f"built-in teacher {teacher!r}: cannot read {spec.directory}/config.json "
                                 f"({error}); rebuild it with `python -m hylo_search.tiny_teacher`") from None
        return from_values(spec.config)
    path = Path(teacher).expanduser()
    if os.path.isdir(path):  # never raises, unlike Path.is_dir on an over-long name
        try:
            return AutoConfig.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as error:
            raise UsageError(f"teacher {teacher!r}: cannot read its config.json ({error})") from None
    if path.is_absolute() or teacher.startswith((".", "~")) or teacher.count("/") != 1:
        raise UsageError(f"teacher {teacher!r}: no such directory, not a hub id ('org/name') and not "
                         f"{BUILTIN_PREFIX}NAME (built-in: {', '.join(sorted(BUILTIN_TEACHERS))})")
    try:
        return AutoConfig.from_pretrained(teacher, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError):
        pass
    if teacher in KNOWN_CONFIGS:
        return from_values(KNOWN_CONFIGS[teacher])
    try:
        return AutoConfig.from_pretrained(teacher, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"teacher {teacher!r}: config not found locally and not fetched from the hub "
                         f"({type(error).__name__})") from None


def user_cache_dir() -> Path:
    """This user's cache folder, ``$XDG_CACHE_HOME/hylo-search`` (default ``~/.cache/hylo-search``), made private
    (0700) when created."""
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hylo-search"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def check_teacher_weights(teacher: str) -> None:
    """Raise a one-line UsageError unless a local teacher folder (or a shipped built-in) holds readable safetensors
    weights. Only the headers are read. Hub ids pass (their weights are fetched when trials run), as do built-ins
    that are built from a seed."""
    if is_builtin(teacher):
        spec = builtin_spec(teacher)
        directory = spec.directory
        if directory is None:
            return
        if spec.not_built and not (directory / "model.safetensors").exists():
            raise UsageError(spec.not_built)
    else:
        directory = Path(teacher).expanduser()
        if not os.path.isdir(directory):
            return
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise UsageError(f"{index}: not a safetensors index with a 'weight_map' ({type(error).__name__})") from None
    elif (directory / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise UsageError(f"{directory}: no model.safetensors (or model.safetensors.index.json); teachers are read "
                         "from safetensors only (save .bin checkpoints again with transformers' save_pretrained)")
    from safetensors import SafetensorError, safe_open

    for name in files:
        path = directory / str(name)
        try:
            with safe_open(str(path), "numpy") as handle:
                handle.keys()
        except (OSError, SafetensorError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UsageError(f"{path}: not a readable safetensors file ({reason}); the teacher's weights are "
                             "missing, truncated or corrupt") from None


def teacher_directory(teacher: str, cache_dir: Path | None = None) -> Path:
    """A local directory with the teacher's safetensors: built-in teachers are built (once, atomically) under
    ``cache_dir/teachers`` (default: :func:`user_cache_dir`); hub ids are fetched by
    :func:`hylo_model.upcycle.source.resolve_local_dir`."""
    if not is_builtin(teacher):
        from hylo_model.upcycle.source import resolve_local_dir

        try:
            return resolve_local_dir(teacher)
        except ValueError as error:
            raise RuntimeError(str(error)) from None
    spec = builtin_spec(teacher)
    if spec.directory is not None:
        if spec.not_built and not (spec.directory / "model.safetensors").exists():
            raise RuntimeError(spec.not_built)
        if not (spec.directory / "config.json").is_file():
            raise RuntimeError(f"built-in teacher {teacher!r}: {spec.directory} holds no config.json (an install "
                               "without the package data?); rebuild it with `python -m hylo_search.tiny_teacher`")
        return spec.directory
    digest = hashlib.sha256(json.dumps([spec.config, spec.version, spec.seed], sort_keys=True,
                                       default=str).encode()).hexdigest()[:12]
    cache_dir = cache_dir if cache_dir is not None else user_cache_dir()
    target = cache_dir / "teachers" / f"{teacher[len(BUILTIN_PREFIX):]}-{digest}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        spec.build(tmp, spec)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # another process won the race only if it finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
