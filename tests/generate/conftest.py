"""A tiny Llama with a word-level tokenizer and a ChatML template, built offline and saved
to a temporary directory: fast stand-ins for a real LLM in the generation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
