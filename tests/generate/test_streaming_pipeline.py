"""RagPipeline.stream and build_generator: the path the API's SSE endpoints take."""

import time
from pathlib import Path

import pytest

from ragtune.config import Settings
from ragtune.generate.local import LocalGenerator, LocalLM
from ragtune.generate.openai_compat import OpenAICompatGenerator
from ragtune.generate.registry import build_generator
from ragtune.types import Answer, Hit, QuestionError


def _split(items):
    deltas = [i for i in items if isinstance(i, str)]
    answers = [i for i in items if isinstance(i, Answer)]
    assert len(answers) == 1 and isinstance(items[-1], Answer)
    return deltas, answers[0]


def test_extractive_stream_yields_deltas_then_the_same_answer_as_ask(system, sample_dir):
    system.ingestor.ingest_paths([sample_dir], progress=False)
    question = "How many characters do neighbouring chunks share by default?"
    deltas, answer = _split(list(system.rag.stream(question)))
    asked = system.rag.ask(question)
    assert answer.text == asked.text and answer.citations == asked.citations and "200" in answer.text
    assert len(deltas) >= 2  # streamed in pieces, not as one block
    # The deltas already carry the renumbered markers the final text shows.
    assert " ".join("".join(deltas).split()) == answer.text
    assert set(answer.timings_ms) == {"retrieve", "generate", "total"}
    with pytest.raises(QuestionError, match="empty"):
        next(system.rag.stream("   "))


def test_local_generator_streams_through_the_pipeline(system, sample_dir, tiny_llama_dir):
    system.ingestor.ingest_paths([sample_dir], progress=False)
    system.rag.generator = LocalGenerator(
        LocalLM.load(tiny_llama_dir, device="cpu"), max_new_tokens=8, context_tokens=4096
    )
    deltas, answer = _split(list(system.rag.stream("How do I install ragtune?")))
    assert answer.usage["completion_tokens"] <= 8 and answer.usage["prompt_tokens"] > 200
    assert answer.hits and answer.timings_ms["generate"] > 0
    if not answer.abstained:
        assert deltas


def test_build_generator_follows_the_settings(monkeypatch, tiny_llama_dir, embedder):
    monkeypatch.setenv("RAGTUNE_GENERATOR", "openai")
    monkeypatch.setenv("RAGTUNE_LLM_BASE_URL", "http://10.0.0.9:8000/v1")
    monkeypatch.setenv("RAGTUNE_LLM_API_KEY", "sk-x")
    monkeypatch.setenv("RAGTUNE_LLM_MODEL", "qwen")
    remote = build_generator(Settings(), embedder)
    assert isinstance(remote, OpenAICompatGenerator)
    assert (remote.base_url, remote.model, remote.name) == ("http://10.0.0.9:8000/v1", "qwen", "openai")
    local = build_generator(
        Settings(generator="local", llm_model=str(tiny_llama_dir), llm_quant="nf4", llm_max_new_tokens=7), embedder
    )
    assert isinstance(local, LocalGenerator) and local.params.max_new_tokens == 7
    assert local.lm.quant_report is not None and local.lm.name == Path(tiny_llama_dir).name
    with pytest.raises(ValueError, match=r"llm\.quant"):
        Settings(llm_quant="int3")


@pytest.mark.slow
def test_smollm2_answers_a_grounded_question():
    """The real model end to end: GGUF (converted once, then cached), grounded prompt, answer."""
    lm = LocalLM.load("")
    hits = [
        Hit(
            "c1",
            "d1",
            "The Rhine is a river that flows through Switzerland, Germany and the Netherlands.",
            "/rhine.md",
            "Rhine",
            0,
            "",
            (),
            1.0,
        ),
        Hit("c2", "d2", "Milvus is an open-source vector database.", "/milvus.md", "Milvus", 0, "", (), 0.5),
    ]
    started = time.monotonic()
    generation = LocalGenerator(lm, max_new_tokens=40).generate("Which countries does the Rhine flow through?", hits)
    assert "Switzerland" in generation.text and "Germany" in generation.text and not generation.abstained
    assert 0 < generation.usage["completion_tokens"] <= 40
    assert time.monotonic() - started < 60
