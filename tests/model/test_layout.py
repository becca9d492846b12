"""The mixer vocabulary and ``Layout.parse`` on bad input: every case is a ValueError with one short line that names
the layer or value and what is allowed, and no input is expanded before its layer count is checked."""

from __future__ import annotations

import tracemalloc

import pytest

from hylo_model.layout import (
    CODE,
    LINEAR_MIXERS,
    MAX_LAYERS,
    MIXER_ALIASES,
    MIXER_OF_CODE,
    MIXERS,
    Layout,
    format_token,
    layout_code,
    mixer_name,
    parse_token,
)

LONG = ",".join(["A", "G"] * 10_000)  # 20,000 tokens


def test_vocabulary_is_consistent():
    assert set(CODE) == set(MIXERS) and set(LINEAR_MIXERS) < set(MIXERS)
    assert all(MIXER_OF_CODE[CODE[m]] == m for m in MIXERS)
    assert set(MIXER_ALIASES.values()) == set(MIXERS)
    assert all(alias == alias.lower() for alias in MIXER_ALIASES)


@pytest.mark.parametrize("alias", sorted(MIXER_ALIASES))
def test_every_alias_names_its_mixer_in_names_and_in_layouts(alias):
    mixer = MIXER_ALIASES[alias]
    assert mixer_name(alias) == mixer_name(alias.upper()) == mixer_name(f" {alias} ") == mixer
    assert parse_token(alias) == (mixer, None)
    assert Layout.parse(f"{alias},{alias.upper()}").mixers == [mixer, mixer]


@pytest.mark.parametrize(
    ("token", "expected"),
    [("L128", ("mla", 128)), ("l8", ("mla", 8)), ("mla:64", ("mla", 64)), ("mla256", ("mla", 256)),
     ("L", ("mla", None)), ("A", ("attention", None)), (" g ", ("gdn", None)), ("mamba2", ("mamba2", None)),
     ("L007", ("mla", 7))],
)
def test_parse_token(token, expected):
    assert parse_token(token) == expected
    assert parse_token(format_token(*expected)) == expected


@pytest.mark.parametrize(("args", "token"), [(("mla", 128), "L128"), (("attn",), "A"), (("gated_deltanet",), "G"),
                                             (("mla",), "L"), (("M",), "M")])
def test_format_token(args, token):
    assert format_token(*args) == token


def test_layout_code_joins_tokens():
    assert layout_code(["A", "L128", "G"]) == "A,L128,G" == str(Layout.parse(["A", "L128", "G"]))


def test_repeats_and_mappings_parse():
    assert str(Layout.parse("A, G*3 ,L16*02")) == "A,G,G,G,L16,L16"
    assert Layout.parse({"code": "A,G*2"}, 3) == Layout.parse("A,G,G")
    assert len(Layout.parse(f"G*{MAX_LAYERS}")) == MAX_LAYERS


BAD = [
    # (input, num_layers, message regex)
    (None, None, r"a layout is a string such as 'A,L128,M,G'.*got None$"),
    (5, None, r"a layout is a string.*got 5$"),
    (5.0, None, r"got 5\.0$"),
    (b"A,G", None, r"got b'A,G'$"),
    (["A", 5], None, r"got \['A', 5\]$"),
    (("A", None), None, r"got \('A', None\)$"),
    ("A,X,G", None, r"layer 1: unknown mixer 'X'; allowed: A, L<rank>, M, G"),
    ("A,,G", None, r"layer 1: unknown mixer ''"),
    ("A,G,", None, r"layer 2: unknown mixer ''"),
    ("A,G3", None, r"layer 1: 'G3' takes no rank"),
    ("A,mamba:4", None, r"layer 1: 'mamba:4' takes no rank"),
    ("L0", None, r"layer 0: kv_lora_rank must be >= 1 and <= 1048576, got 'L0'"),
    ("L99999999", None, r"layer 0: kv_lora_rank must be >= 1 and <= 1048576"),
    ("L" + "9" * 5000, None, r"layer 0: kv_lora_rank must be >= 1"),
    ("L-5", None, r"unknown mixer 'L-5'"),
    ("L1.5", None, r"unknown mixer 'L1.5'"),
    ("A,L\u0661\u0662\u0668", None, r"layer 1: the rank in 'L١٢٨' must be written in ASCII digits"),
    ("mla:\u0968", None, r"the rank in 'mla:२' must be written in ASCII digits"),
    ("L\u00b2", None, r"unknown mixer 'L²'"),
    ("A*\u0663", None, r"layer 0: repeat count in 'A\*٣' must be a whole number \(ASCII digits\)"),
    ("A*\u00b2", None, r"repeat count in 'A\*²' must be a whole number"),
    ("A*", None, r"repeat count in 'A\*' must be a whole number"),
    ("A*-2", None, r"repeat count in 'A\*-2' must be a whole number"),
    ("A*2*3", None, r"repeat count in 'A\*2\*3' must be a whole number"),
    ("A*0", None, r"layer 0: repeat count must be >= 1"),
    ("A*100000000000", None, rf"has more than {MAX_LAYERS} layers \(at 'A\*100000000000'\); at most {MAX_LAYERS}"),
    ("A*100000000", 16, r"has more than 16 layers \(at 'A\*100000000'\) but the model has 16"),
    ("A*" + "9" * 10_000, None, rf"has more than {MAX_LAYERS} layers"),
    ("A,G*3", 3, r"has more than 3 layers \(at 'G\*3'\) but the model has 3"),
    ("A,G*3", 5, r"has 4 layers but the model has 5"),
    (f"G*{MAX_LAYERS + 1}", None, rf"has more than {MAX_LAYERS} layers"),
    (LONG, None, rf"has more than {MAX_LAYERS} layers"),
    (LONG, 24, r"has more than 24 layers"),
    ({"layers": "A,G"}, None, r"'layers' must be a list of tokens .* got str"),
    ({"layers": ["A", {"mixer": None}]}, None, r"layers\[1\]\.mixer None is unknown; allowed: attention, mla"),
    ({"layers": [{"mixer": "mla", "kv_lora_rank": True}]}, None, r"layers\[0\]: kv_lora_rank must be an integer"),
    ({"layers": [{"mixer": "mla", "kv_lora_rank": "128"}]}, None, r"kv_lora_rank must be an integer .* got '128'"),
    ({"layers": ["G*100000000000"]}, None, rf"has more than {MAX_LAYERS} layers"),
    ({"code": None}, None, r"a layout is a string.*got None$"),
    ({"mixers": "A"}, None, r"needs a 'code' or 'layers' field"),
]


@pytest.mark.parametrize(("code", "num_layers", "message"), BAD,
                         ids=[f"{i}-{repr(c)[:24]}" for i, (c, _, _) in enumerate(BAD)])
def test_bad_layouts_raise_one_short_value_error(code, num_layers, message):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message) as caught:
            Layout.parse(code, num_layers)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text = str(caught.value)
    assert "\n" not in text and len(text) < 400, text  # a 20,000-token layout is echoed cut, not whole
    # Nothing is expanded before the count is checked: the worst case here (LONG) is its own token list.
    assert peak < 8 * 2**20, peak


@pytest.mark.parametrize("name", [None, 3, "", "conv", "mla128", "A*2", "x" * 10_000])
def test_mixer_name_rejects_non_mixers(name):
    allowed = r"unknown mixer .*; allowed: attention, mla, mamba2, gdn \(or A, L, M, G"
    with pytest.raises(ValueError, match=allowed) as e:
        mixer_name(name)
    assert len(str(e.value)) < 200


@pytest.mark.parametrize("token", [None, 7, "G*2", "A,G", "X", "G3", "L0"])
def test_parse_token_rejects_non_tokens(token):
    with pytest.raises(ValueError):
        parse_token(token)
