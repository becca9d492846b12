"""``Layout.parse`` on bad input, from the Python API: a one-line ValueError that names the value (cut short) and
what is allowed, raised before a huge ``X*n`` repeat is expanded (memory stays small)."""

from __future__ import annotations

import tracemalloc

import pytest

from hylo_model import Layout

# Layout.parse from the Python API: (id, value, num_layers, expected text of the ValueError).
LAYOUT_CASES = [
    ("none", None, None, "a layout is a string such as 'A,L128,M,G'"),
    ("int", 5, None, "got 5"),
    ("float", 5.0, None, "got 5.0"),
    ("bytes", b"A,G", None, "got b'A,G'"),
    ("list_of_ints", [1, 2], None, "got [1, 2]"),
    ("empty", "", None, "unknown mixer ''"),
    ("comma", ",", None, "layer 0"),
    ("empty_token", "A,,G", None, "layer 1"),
    ("unknown_mixer", "A,Q9", None, "unknown mixer 'Q9'"),
    ("rank_on_gdn", "G128", None, "'G128' takes no rank"),
    ("rank_zero", "L0", None, "kv_lora_rank must be >= 1"),
    ("rank_huge", "L99999999", None, "kv_lora_rank must be >= 1 and <= 1048576"),
    ("rank_arabic_indic", "L\u0661\u0662\u0668", None, "ASCII digits"),
    ("repeat_arabic_indic", "A*\u0663", None, "ASCII digits"),
    ("repeat_zero", "A*0", None, "repeat count must be >= 1"),
    ("repeat_negative", "A*-1", None, "must be a whole number"),
    ("repeat_text", "A*x", None, "must be a whole number"),
    ("repeat_fraction", "A*2.5", None, "must be a whole number"),
    ("repeat_1e8", "A*100000000", None, "has more than 4096 layers"),
    ("repeat_1e11", "A*100000000000", None, "has more than 4096 layers"),
    ("repeat_10000_digits", "A*" + "9" * 10_000, None, "has more than 4096 layers"),
    ("twenty_thousand_tokens", ",".join(["A", "G"] * 10_000), None, "has more than 4096 layers"),
    ("too_short_for_model", "A,G", 4, "has 2 layers but the model has 4"),
    ("repeat_beyond_model", "A*8", 4, "has more than 4 layers"),
    ("newline_in_token", "A\nG,A,G", None, "unknown mixer"),
    ("layers_not_list", {"layers": 5}, None, "'layers' must be a list"),
    ("layers_unknown_mixer", {"layers": [{"mixer": "x"}]}, None, "layers[0].mixer 'x' is unknown; allowed"),
    ("layers_extra_field", {"layers": [{"mixer": "A", "rank": 1}]}, None, "layers[0] has unknown fields ['rank']"),
    ("layers_negative_rank", {"layers": [{"mixer": "L", "kv_lora_rank": -1}]}, None, "kv_lora_rank must be"),
    ("layers_bool_rank", {"layers": [{"mixer": "L", "kv_lora_rank": True}]}, None, "kv_lora_rank must be"),
    ("code_disagrees", {"code": "A,G", "layers": ["A", "A"]}, None, "disagrees with 'layers'"),
    ("mapping_without_code", {}, None, "needs a 'code' or 'layers' field"),
    ("code_not_text", {"code": 5}, None, "got 5"),
]


@pytest.mark.parametrize("value, num_layers, expected", [pytest.param(*c[1:], id=c[0]) for c in LAYOUT_CASES])
def test_bad_layout_is_one_short_value_error(value, num_layers, expected):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as raised:
            Layout.parse(value, num_layers)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(raised.value)
    assert expected in message and "\n" not in message and len(message) < 400, message
    # A repeat is bounded before it is expanded: a 1e8-layer code must not allocate its layers.
    assert peak < 4 * 2**20 + 4 * len(value if isinstance(value, str) else ""), peak


