"""Fine-tuning fixtures: the tiny Llama of the generation tests and a small QA set in its
vocabulary, so a whole training run takes about a second."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ragtune.finetune.config import FinetuneConfig
from tests.builders import build_tiny_llama

# Answers of different lengths, so micro-batches hold different numbers of target tokens.
QA_ROWS = [
    {"question": "who created milvus ?", "answer": "zilliz", "context": "milvus was created by zilliz ."},
    {"question": "what is milvus ?", "answer": "a vector database", "context": "milvus is a vector database ."},
    {
        "question": "where does the rhine flow ?",
        "answer": "through switzerland",
        "context": "the rhine river flows through switzerland .",
    },
    {"question": "what is the capital of france ?", "answer": "paris", "context": "paris is the capital of france ."},
    {
        "question": "what is paris ?",
        "answer": "the capital of france , a city on a river",
        "context": "paris is the capital of france , a city on a river .",
    },
    {"question": "who was hacked ?", "answer": None},
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-ft"))


@pytest.fixture
def qa_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in QA_ROWS * 4))
    return path


@pytest.fixture
def make_config(tiny_model_dir: Path, qa_jsonl: Path, tmp_path: Path):
    def make(output: str = "run", **overrides: Any) -> FinetuneConfig:
        values: dict[str, Any] = {
            "model": str(tiny_model_dir),
            "data": str(qa_jsonl),
            "output_dir": tmp_path / output,
            "global_batch": 4,
            "micro_batch": 2,
            "max_steps": 4,
            "top_k": 2,
            "lr": 1e-2,
            "warmup_steps": 1,
            "eval_fraction": 0.2,
            "save_every": 2,
            "quant": "nf4",
        }
        return FinetuneConfig(**(values | overrides))

    return make
