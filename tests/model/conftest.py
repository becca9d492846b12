"""Marks that transformers' shared model tests use (registered by transformers' own conftest, which its source
distribution does not ship), so that ``tests/model/test_transformers_common.py`` collects without warnings."""

TRANSFORMERS_MARKS = ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
                      "torch_compile_test", "generate")


def pytest_configure(config):
    for mark in TRANSFORMERS_MARKS:
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' shared model tests")
