"""The layout of a hybrid model as a value: one mixer per layer, and the MLA latent rank where it applies.

This module owns the mixer vocabulary; everything else imports it from here. A layer's token is a mixer name
(any alias below, case-insensitive) with an optional MLA rank::

    A        attention (GQA + RoPE, the teacher's own layer)      also: attention, attn, full_attention
    L[r]     MLA with kv_lora_rank r (config default if omitted)  also: mla, mla128, mla:128
    M        Mamba2                                               also: mamba2, mamba
    G        Gated DeltaNet                                       also: gdn, gated_deltanet, gated_delta_net

The same alias set names a mixer wherever one is expected (:func:`mixer_name`: search-space ``mixers`` lists,
count rules, layout files). A layout's compact code is comma-separated, one token per layer; a token may be
repeated with ``*n`` (``"A,G*6,L128"``). Ranks and repeats are ASCII digits. ``str(layout)`` writes every layer
out in canonical tokens (:func:`format_token`), so ``Layout.parse(str(layout)) == layout``.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

MIXERS = ("attention", "mla", "mamba2", "gdn")
LINEAR_MIXERS = ("mamba2", "gdn")
CODE = {"attention": "A", "mla": "L", "mamba2": "M", "gdn": "G"}
MIXER_OF_CODE = {code: mixer for mixer, code in CODE.items()}
MIXER_ALIASES = {
    "a": "attention", "attention": "attention", "attn": "attention", "full_attention": "attention",
    "l": "mla", "mla": "mla",
    "m": "mamba2", "mamba2": "mamba2", "mamba": "mamba2",
    "g": "gdn", "gdn": "gdn", "gated_deltanet": "gdn", "gated_delta_net": "gdn",
}
ALLOWED_MIXERS = "attention, mla, mamba2, gdn (or A, L, M, G, attn, full_attention, mamba, gated_deltanet)"
ALLOWED_TOKENS = "A, L<rank>, M, G (or attention, mla<rank>, mamba2, gdn), optionally repeated as X*n"
# Far above any real decoder's depth: bounds a parsed layout (and an ``X*n`` repeat) before anything is expanded.
MAX_LAYERS = 4096
MAX_RANK = 1 << 20
_RANKED = re.compile(r"([a-z_]+?):?([0-9]+)")


def mixer_name(name: Any) -> str:
    """The canonical mixer (one of :data:`MIXERS`) for a name or alias: ``"attn"``, ``"A"``, ``"Gated_DeltaNet"``."""
    mixer = MIXER_ALIASES.get(name.strip().lower()) if isinstance(name, str) else None
    if mixer is None:
        raise ValueError(f"unknown mixer {_echo(name)}; allowed: {ALLOWED_MIXERS}")
    return mixer


def parse_token(token: str) -> tuple[str, int | None]:
    """One layer's token as ``(mixer, kv_lora_rank)``: ``"L128"`` -> ``("mla", 128)``, ``"mla:64"`` ->
    ``("mla", 64)``, ``"L"`` -> ``("mla", None)`` (the config's default rank), ``"G"`` -> ``("gdn", None)``."""
    if not isinstance(token, str):
        raise ValueError(f"a layer token is a string such as 'A' or 'L128', got {type(token).__name__}")
    return _parse_token(token)


@functools.lru_cache(maxsize=4096)
def _parse_token(token: str) -> tuple[str, int | None]:
    text = token.strip().lower()
    # A whole-name alias first ("mamba2" is Mamba2, not "mamba" with rank 2), then name + rank.
    if text in MIXER_ALIASES:
        return MIXER_ALIASES[text], None
    match = _RANKED.fullmatch(text)
    mixer = MIXER_ALIASES.get(match.group(1)) if match else None
    if mixer is None:
        if (other := re.fullmatch(r"([a-z_]+?):?(\d+)", text)) and other.group(1) in MIXER_ALIASES:
            raise ValueError(f"the rank in {_echo(token.strip())} must be written in ASCII digits (0-9)")
        raise ValueError(f"unknown mixer {_echo(token.strip())}; allowed: {ALLOWED_TOKENS}")
    if mixer != "mla":
        raise ValueError(f"{_echo(token.strip())} takes no rank; only MLA layers (L<rank>) have one")
    digits = match.group(2).lstrip("0") or "0"
    if len(digits) > len(str(MAX_RANK)) or not 1 <= int(digits) <= MAX_RANK:
        raise ValueError(f"kv_lora_rank must be >= 1 and <= {MAX_RANK}, got {_echo(token.strip())}")
    return mixer, int(digits)


def format_token(mixer: str, kv_lora_rank: int | None = None) -> str:
    """The canonical token of one layer: ``format_token("mla", 128) == "L128"``, ``format_token("gdn") == "G"``."""
    return LayerSpec(mixer_name(mixer), kv_lora_rank).code


def layout_code(tokens: Iterable[str]) -> str:
    """Tokens joined into a compact code (``["A", "L128", "G"]`` -> ``"A,L128,G"``), the key a layout is known by."""
    return ",".join(tokens)


@dataclass(frozen=True, order=True)
class LayerSpec:
    """One layer of a layout. ``kv_lora_rank`` is set only for MLA layers (None = the config's default)."""

    mixer: str
    kv_lora_rank: int | None = None

    def __post_init__(self) -> None:
        if self.mixer not in MIXERS:
            raise ValueError(f"unknown mixer {_echo(self.mixer)}; allowed: {', '.join(MIXERS)}")
        if self.kv_lora_rank is not None and self.mixer != "mla":
            raise ValueError(f"only MLA layers take a kv_lora_rank, not {self.mixer!r}")
        rank = self.kv_lora_rank
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_RANK):
            raise ValueError(f"kv_lora_rank must be an integer in 1..{MAX_RANK}, got {_echo(rank)}")

    @property
    def code(self) -> str:
        return CODE[self.mixer] + (str(self.kv_lora_rank) if self.kv_lora_rank is not None else "")


@dataclass(frozen=True)
class Layout:
    """A tuple of :class:`LayerSpec`, one per decoder layer."""

    layers: tuple[LayerSpec, ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a layout needs at least one layer")

    @classmethod
    def parse(cls, code: str | Layout | Iterable[str] | Mapping[str, Any], num_layers: int | None = None) -> Layout:
        """Parse ``"A,L128,M,G"`` (or a list of tokens, or a :meth:`to_dict` mapping); with ``num_layers`` also
        check the length. Any bad input raises ValueError naming the layer and the allowed values; the layer count
        is checked (``num_layers``, else :data:`MAX_LAYERS`) before an ``X*n`` repeat is expanded."""
        if isinstance(code, Layout):
            layout = code
        elif isinstance(code, Mapping):
            return cls.from_dict(code, num_layers)
        else:
            layout = cls(_expand(_read_tokens(code), code, num_layers))
        if num_layers is not None:
            layout.check_length(num_layers)
        return layout

    @classmethod
    def uniform(cls, mixer: str, num_layers: int, kv_lora_rank: int | None = None) -> Layout:
        return cls(tuple(LayerSpec(mixer, kv_lora_rank) for _ in range(num_layers)))

    def check_length(self, num_layers: int) -> None:
        if len(self) != num_layers:
            raise ValueError(
                f"layout {_echo(str(self))} has {len(self)} layers but the model has {num_layers}; "
                f"give exactly {num_layers} comma-separated tokens ({ALLOWED_TOKENS})"
            )

    def check_ranks(self, max_rank: int, default_rank: int) -> None:
        """Raise if an MLA layer's rank exceeds ``max_rank`` (what the model's dimensions allow)."""
        for index, layer in enumerate(self.layers):
            if layer.mixer != "mla":
                continue
            rank = layer.kv_lora_rank or default_rank
            if not 1 <= rank <= max_rank:
                raise ValueError(
                    f"layout {_echo(str(self))}: layer {index}: kv_lora_rank {rank} is out of range; "
                    f"allowed: 1..{max_rank} for these dimensions"
                )

    def __str__(self) -> str:
        return ",".join(layer.code for layer in self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerSpec]:
        return iter(self.layers)

    def __getitem__(self, index: int) -> LayerSpec:
        return self.layers[index]

    @property
    def mixers(self) -> list[str]:
        return [layer.mixer for layer in self.layers]

    def counts(self) -> dict[str, int]:
        counter = Counter(self.mixers)
        return {mixer: counter.get(mixer, 0) for mixer in MIXERS}

    def to_dict(self) -> dict[str, Any]:
        """A YAML/JSON-friendly form; :meth:`from_dict` reads it (or just ``{"code": ...}``)."""
        return {
            "code": str(self),
            "layers": [
                {"mixer": layer.mixer, **({"kv_lora_rank": layer.kv_lora_rank} if layer.kv_lora_rank else {})}
                for layer in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], num_layers: int | None = None) -> Layout:
        if not isinstance(data, Mapping):
            raise ValueError(f"a layout mapping needs a 'code' or 'layers' field, got {type(data).__name__}")
        if "layers" in data:
            if not isinstance(data["layers"], list):
                raise ValueError(f"layout: 'layers' must be a list of tokens or {{mixer, kv_lora_rank}} mappings, "
                                 f"got {type(data['layers']).__name__}")
            layers = []
            for index, entry in enumerate(data["layers"]):
                if isinstance(entry, str):
                    layers.extend(_expand(entry.split(","), entry, None, before=len(layers)))
                    continue
                if not isinstance(entry, Mapping) or "mixer" not in entry:
                    raise ValueError(f"layout: layers[{index}] needs a 'mixer' field ({', '.join(MIXERS)})")
                mixer = MIXER_ALIASES.get(entry["mixer"].strip().lower()) if isinstance(entry["mixer"], str) else None
                if mixer is None:
                    raise ValueError(
                        f"layout: layers[{index}].mixer {_echo(entry['mixer'])} is unknown; allowed: {ALLOWED_MIXERS}"
                    )
                unknown = set(entry) - {"mixer", "kv_lora_rank"}
                if unknown:
                    raise ValueError(f"layout: layers[{index}] has unknown fields {sorted(unknown)}")
                try:
                    layers.append(LayerSpec(mixer, entry.get("kv_lora_rank")))
                except ValueError as error:
                    raise ValueError(f"layout: layers[{index}]: {error}") from None
            layout = cls(tuple(layers))
            if "code" in data and cls.parse(data["code"]) != layout:
                raise ValueError(
                    f"layout: 'code' {_echo(data['code'])} disagrees with 'layers' ({_short(str(layout))})"
                )
        elif "code" in data:
            layout = cls.parse(data["code"])
        else:
            raise ValueError("a layout mapping needs a 'code' or 'layers' field")
        if num_layers is not None:
            layout.check_length(num_layers)
        return layout


def _read_tokens(code: Any) -> list[str]:
    if isinstance(code, str):
        return code.split(",")
    if isinstance(code, (list, tuple)) and all(isinstance(token, str) for token in code):
        return list(code)
    raise ValueError(
        f"a layout is a string such as 'A,L128,M,G' or a list of such tokens ({ALLOWED_TOKENS}), got {_echo(code)}"
    )


def _expand(tokens: list[str], code: Any, num_layers: int | None, before: int = 0) -> tuple[LayerSpec, ...]:
    """Tokens (``"G*6"`` repeats) -> one LayerSpec per layer; ``before`` layers already precede them. The total is
    counted first, so a huge repeat is refused without being expanded."""
    limit = num_layers if num_layers is not None else MAX_LAYERS
    specs: list[tuple[LayerSpec, int]] = []
    total = before
    for token in tokens:
        name, star, count = token.partition("*")
        where = f"layout {_echo(code)}: layer {total}"
        try:
            spec = LayerSpec(*parse_token(name))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        repeat = 1
        if star:
            count = count.strip()
            if not (count.isascii() and count.isdigit()):
                raise ValueError(f"{where}: repeat count in {_echo(token.strip())} must be a whole number "
                                 "(ASCII digits), as in 'G*6'")
            digits = count.lstrip("0") or "0"
            # Compare lengths before int(): a 10,000-digit count is refused without converting it.
            repeat = int(digits) if len(digits) <= len(str(limit)) else limit + 1
            if repeat < 1:
                raise ValueError(f"{where}: repeat count must be >= 1")
        total += repeat
        if total > limit:
            if num_layers is not None:
                raise ValueError(f"layout {_echo(code)} has more than {num_layers} layers (at {_echo(token.strip())}) "
                                 f"but the model has {num_layers}; give exactly {num_layers} layers ({ALLOWED_TOKENS})")
            raise ValueError(f"layout {_echo(code)} has more than {MAX_LAYERS} layers (at {_echo(token.strip())}); "
                             f"at most {MAX_LAYERS} are allowed")
        specs.append((spec, repeat))
    return tuple(spec for spec, repeat in specs for _ in range(repeat))


def _echo(value: Any) -> str:
    """``value`` for an error message: codes (cut by :func:`_short`) in quotes, anything else as its repr."""
    quoted = isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
    return repr(_short(value)) if quoted else _short(value)


def _short(value: Any, limit: int = 60) -> str:
    """``value`` as text for an error message, cut to ``limit`` characters (a layout may be 20,000 tokens)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value[:limit]):
        text = ",".join(value[:limit])
    else:
        text = repr(value)[: limit + 3]
    return text if len(text) <= limit else text[: limit - 3] + "..."
