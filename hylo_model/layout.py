"""The layout of a hybrid model as a value: one mixer per layer, and the MLA latent rank where it applies.

Compact code: comma-separated, one token per layer (case-insensitive)::

    A        attention (GQA + RoPE, the teacher's own layer)      also: attention, attn
    L[r]     MLA with kv_lora_rank r (config default if omitted)  also: mla, mla128, mla:128
    M        Mamba2                                               also: mamba2, mamba
    G        Gated DeltaNet                                       also: gdn, gated_deltanet

A token may be repeated with ``*n`` (``"A,G*6,L128"``). ``str(layout)`` writes every layer out, so
``Layout.parse(str(layout)) == layout``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

MIXERS = ("attention", "mla", "mamba2", "gdn")
LINEAR_MIXERS = ("mamba2", "gdn")
_CODE = {"attention": "A", "mla": "L", "mamba2": "M", "gdn": "G"}
_ALIASES = {
    "a": "attention", "attention": "attention", "attn": "attention", "full_attention": "attention",
    "l": "mla", "mla": "mla",
    "m": "mamba2", "mamba2": "mamba2", "mamba": "mamba2",
    "g": "gdn", "gdn": "gdn", "gated_deltanet": "gdn", "gated_delta_net": "gdn",
}
_RANKED = re.compile(r"([a-z_]+?):?(\d+)")
ALLOWED_TOKENS = "A, L<rank>, M, G (or attention, mla<rank>, mamba2, gdn), optionally repeated as X*n"


@dataclass(frozen=True, order=True)
class LayerSpec:
    """One layer of a layout. ``kv_lora_rank`` is set only for MLA layers (None = the config's default)."""

    mixer: str
    kv_lora_rank: int | None = None

    def __post_init__(self) -> None:
        if self.mixer not in MIXERS:
            raise ValueError(f"unknown mixer {self.mixer!r}; allowed: {', '.join(MIXERS)}")
        if self.kv_lora_rank is not None and self.mixer != "mla":
            raise ValueError(f"only MLA layers take a kv_lora_rank, not {self.mixer!r}")
        if self.kv_lora_rank is not None and (not isinstance(self.kv_lora_rank, int) or self.kv_lora_rank < 1):
            raise ValueError(f"kv_lora_rank must be a positive integer, got {self.kv_lora_rank!r}")

    @property
    def code(self) -> str:
        return _CODE[self.mixer] + (str(self.kv_lora_rank) if self.kv_lora_rank is not None else "")


@dataclass(frozen=True)
class Layout:
    """A tuple of :class:`LayerSpec`, one per decoder layer."""

    layers: tuple[LayerSpec, ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a layout needs at least one layer")

    @classmethod
    def parse(cls, code: str | Layout | Iterable[str], num_layers: int | None = None) -> Layout:
        """Parse ``"A,L128,M,G"``; with ``num_layers`` also check the length."""
        if isinstance(code, Layout):
            layout = code
        else:
            tokens = code.split(",") if isinstance(code, str) else list(code)
            layers: list[LayerSpec] = []
            for token in tokens:
                token_str = str(token).strip().lower()
                name, star, count = token_str.partition("*")
                # A whole-name alias first ("mamba2" is Mamba2, not "mamba" with rank 2), then name + rank.
                match = None if name in _ALIASES else _RANKED.fullmatch(name)
                mixer = _ALIASES.get(name) or (_ALIASES.get(match.group(1)) if match else None)
                if mixer is None or (star and not count.isdigit()):
                    raise ValueError(
                        f"layout {_short(code)!r}: layer {len(layers)}: unknown mixer {str(token).strip()!r}; "
                        f"allowed: {ALLOWED_TOKENS}"
                    )
                rank = int(match.group(2)) if match else None
                repeat = int(count) if star else 1
                if rank is not None and mixer != "mla":
                    raise ValueError(
                        f"layout {_short(code)!r}: layer {len(layers)}: {str(token).strip()!r} takes no rank; "
                        "only MLA layers (L<rank>) have one"
                    )
                if rank is not None and rank < 1:
                    raise ValueError(f"layout {_short(code)!r}: layer {len(layers)}: kv_lora_rank must be >= 1")
                if repeat < 1:
                    raise ValueError(f"layout {_short(code)!r}: layer {len(layers)}: repeat count must be >= 1")
                layers.extend([LayerSpec(mixer, rank)] * repeat)
            layout = cls(tuple(layers))
        if num_layers is not None:
            layout.check_length(num_layers)
        return layout

    @classmethod
    def uniform(cls, mixer: str, num_layers: int, kv_lora_rank: int | None = None) -> Layout:
        return cls(tuple(LayerSpec(mixer, kv_lora_rank) for _ in range(num_layers)))

    def check_length(self, num_layers: int) -> None:
        if len(self) != num_layers:
            raise ValueError(
                f"layout {_short(str(self))!r} has {len(self)} layers but the model has {num_layers}; "
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
                    f"layout {_short(str(self))!r}: layer {index}: kv_lora_rank {rank} is out of range; "
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
            layers = []
            for index, entry in enumerate(data["layers"]):
                if isinstance(entry, str):
                    layers.extend(cls.parse(entry).layers)
                    continue
                if not isinstance(entry, Mapping) or "mixer" not in entry:
                    raise ValueError(f"layout: layers[{index}] needs a 'mixer' field ({', '.join(MIXERS)})")
                mixer = _ALIASES.get(str(entry["mixer"]).lower())
                if mixer is None:
                    raise ValueError(
                        f"layout: layers[{index}].mixer {entry['mixer']!r} is unknown; allowed: {', '.join(MIXERS)}"
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
                raise ValueError(f"layout: 'code' {data['code']!r} disagrees with 'layers' ({layout})")
        elif "code" in data:
            layout = cls.parse(data["code"])
        else:
            raise ValueError("a layout mapping needs a 'code' or 'layers' field")
        if num_layers is not None:
            layout.check_length(num_layers)
        return layout


def _short(code: Any) -> str:
    text = code if isinstance(code, str) else ",".join(map(str, code))
    return text if len(text) <= 60 else text[:57] + "..."
