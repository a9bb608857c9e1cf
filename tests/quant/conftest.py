"""Tiny transformers models built from configs (no downloads) for the NF4 tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


def tiny_llama(tie: bool = False, seed: int = 0) -> torch.nn.Module:
    """A 2-layer Llama; the MLP's down_proj has 96 inputs, so NF4 blocks straddle rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_causal_lm(directory: Path) -> Path:
    """A tiny Llama plus a whitespace word-level tokenizer, saved as an HF model directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [
        "the",
        "immune",
        "system",
        "protects",
        "against",
        "disease",
        "and",
        "detects",
        "a",
        "wide",
        "variety",
        "of",
        "agents",
    ]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(directory)
    tiny_llama().save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_lm_dir(tmp_path: Path) -> Path:
    return save_tiny_causal_lm(tmp_path / "tiny-llama")


def switch_off_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set ``RAGTUNE_NF4_NATIVE=0`` for the rest of the test, as a user sets it before starting
    Python (the dispatch reads it once per process, so its decision is forgotten here)."""
    from ragtune.quant.dispatch import NATIVE_SWITCH, native_enabled

    monkeypatch.setenv(NATIVE_SWITCH, "0")
    native_enabled.cache_clear()


@pytest.fixture(autouse=True)
def _native_decision_follows_the_environment() -> Iterator[None]:
    """After each test the dispatch decides again, so a switch set in one test ends with it."""
    from ragtune.quant.dispatch import native_enabled

    yield
    native_enabled.cache_clear()


@pytest.fixture(params=["native", "eager"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the C decode kernel and again with the eager PyTorch decode, switched
    the way a user switches it (``RAGTUNE_NF4_NATIVE=0``)."""
    from ragtune.quant.dispatch import Backend, decode_backend

    if request.param == "native":
        if decode_backend(torch.device("cpu")) is not Backend.NATIVE:
            pytest.skip("no C compiler here (or RAGTUNE_NF4_NATIVE=0): only the eager decode runs")
    else:
        switch_off_native(monkeypatch)
    return request.param
