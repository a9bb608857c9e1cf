"""Choosing the model per answer: the OpenAI-compatible backend sends the chosen name (a LoRA
adapter vLLM serves as a model of its own), against a stub server that records what it got."""

from __future__ import annotations

import pytest

from ragtune.config import Settings
from ragtune.generate.base import run_to_end
from ragtune.generate.extractive import ExtractiveAnswerer
from ragtune.generate.local import LocalGenerator
from ragtune.generate.openai_compat import LLMServerError, OpenAICompatGenerator
from ragtune.generate.registry import build_generator
from ragtune.types import Hit
from tests.llm_stub import stub_llm

HITS = [Hit("c1", "d1", "Milvus was created by Zilliz.", "/m.md", "milvus", 0, "", (), 1.0)]
SERVED = ("smollm2", "rag", "legal")  # vLLM lists the base model, then each --lora-modules name


def test_the_default_model_unless_one_is_chosen():
    with stub_llm(served=SERVED, answer="Zilliz [1].") as stub:
        generator = OpenAICompatGenerator(stub.url, "smollm2", models=["rag", "legal"], max_retries=0)
        assert generator.model_names == SERVED
        assert generator.generate("Who created Milvus?", HITS).text == "Zilliz [1]."
        assert generator.generate("Who created Milvus?", HITS, model="rag").text == "Zilliz [1]."
        streamed = run_to_end(generator.stream("Who created Milvus?", HITS, model="legal"))
        # Condensing and paraphrasing (ChatModel.complete) stay with the default model.
        generator.complete([{"role": "user", "content": "hi"}], max_new_tokens=4)
    assert streamed.text == "Zilliz [1]."
    assert stub.models() == ["smollm2", "rag", "legal", "smollm2"]
    assert [body["stream"] for body in stub.requests] == [False, False, True, False]


def test_an_unnamed_default_is_the_servers_first_and_cannot_be_chosen_by_name():
    with stub_llm(served=SERVED) as stub:
        generator = OpenAICompatGenerator(stub.url, models=["rag"], max_retries=0)
        assert generator.model_names == ("rag",)
        generator.generate("Who created Milvus?", HITS)
        generator.generate("Who created Milvus?", HITS, model="rag")
    assert stub.models() == ["smollm2", "rag"]


def test_a_listed_name_the_server_does_not_serve_is_a_clear_error():
    with stub_llm(served=("smollm2",)) as stub:
        generator = OpenAICompatGenerator(stub.url, "smollm2", models=["rag"], max_retries=0)
        with pytest.raises(LLMServerError, match=r"does not serve model 'rag'.*it serves: smollm2.*RAGTUNE_LLM_MODELS"):
            generator.generate("Who created Milvus?", HITS, model="rag")


def test_the_names_come_from_the_settings_and_only_llm_backends_have_any(embedder):
    settings = Settings(_env_file=None, generator="openai", llm_model="smollm2", llm_models="rag, legal,rag")
    assert settings.llm.models == ["rag", "legal", "rag"]
    generator = build_generator(settings, embedder)
    assert isinstance(generator, OpenAICompatGenerator) and generator.model_names == SERVED
    assert ExtractiveAnswerer(embedder).model_names == LocalGenerator.model_names == ()
