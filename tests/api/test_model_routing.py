"""Per-request model choice over HTTP: `model` on /v1/query (and its collection variant) and on
/v1/chat/completions reaches the LLM server as the model it names (a vLLM LoRA adapter), the
default when none or 'ragtune' is given, and a name not allowed is a 400 naming the allowed ones.
The LLM server is a stub that records the `model` of every request."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.api.support import Service, sample_files, served, service_settings, wait_for_job
from tests.llm_stub import StubLLM, stub_llm

QUESTION = "Which Milvus URI selects a server?"
# GET /v1/models, in order; "retired" is allowed here but no longer served by the LLM server.
ALLOWED = ["ragtune", "smollm2", "rag", "legal", "retired"]


@pytest.fixture(scope="module")
def routed(tmp_path_factory, embedder) -> Iterator[tuple[Service, StubLLM]]:
    with stub_llm(served=("smollm2", "rag", "legal"), answer="Port 19530 [1].") as stub:
        settings = service_settings(
            tmp_path_factory.mktemp("routing") / "data",
            generator="openai",
            llm_base_url=stub.url,
            llm_model="smollm2",
            llm_models="rag,legal,retired",
            llm_max_retries=0,
        )
        with served(settings, embedder) as service:
            accepted = service.http.post("/v1/collections/handbook/documents", files=sample_files("configuration.txt"))
            assert wait_for_job(service.http, accepted.json()["job_id"])["state"] == "done"
            yield service, stub


@pytest.fixture
def service(routed) -> Service:
    return routed[0]


@pytest.fixture
def stub(routed) -> StubLLM:
    routed[1].requests.clear()
    return routed[1]


def test_models_lists_the_allowed_names(service):
    assert [m["id"] for m in service.http.get("/v1/models").json()["data"]] == ALLOWED


@pytest.mark.parametrize(
    ("chosen", "sent"), [(None, "smollm2"), ("ragtune", "smollm2"), ("smollm2", "smollm2"), ("rag", "rag")]
)
def test_query_sends_the_chosen_model(service, stub, chosen, sent):
    body = {"question": QUESTION} | ({"model": chosen} if chosen else {})
    response = service.http.post("/v1/query", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["answer"] == "Port 19530 [1]."
    assert stub.models() == [sent]


def test_streamed_and_collection_queries_send_the_chosen_model(service, stub):
    with service.http.stream("POST", "/v1/query", json={"question": QUESTION, "model": "legal", "stream": True}) as r:
        assert r.status_code == 200 and "event: done" in r.read().decode()
    answered = service.http.post("/v1/collections/handbook/query", json={"question": QUESTION, "model": "rag"})
    assert answered.status_code == 200 and answered.json()["citations"]
    assert stub.models() == ["legal", "rag"]


def test_a_follow_up_is_condensed_by_the_default_and_answered_by_the_chosen_model(service, stub):
    conversation = service.http.post("/v1/conversations", json={}).json()["id"]
    for question in (QUESTION, "And its port?"):
        asked = {"question": question, "conversation_id": conversation, "model": "rag"}
        assert service.http.post("/v1/query", json=asked).status_code == 200
    assert list(zip(stub.kinds(), stub.models())) == [("answer", "rag"), ("condense", "smollm2"), ("answer", "rag")]


@pytest.mark.parametrize("stream", [False, True])
def test_an_unknown_model_is_a_400_naming_the_allowed_ones(service, stub, stream):
    for path in ("/v1/query", "/v1/collections/handbook/query"):
        response = service.http.post(path, json={"question": QUESTION, "model": "gpt-4o", "stream": stream})
        assert response.status_code == 400 and response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "model_not_found" and "'gpt-4o'" in error["message"]
        assert all(repr(name) in error["message"] for name in ALLOWED), error["message"]
    assert stub.requests == []  # refused before any work


def test_an_allowed_name_the_llm_server_does_not_serve_is_a_502_naming_what_it_serves(service, stub):
    response = service.http.post("/v1/query", json={"question": QUESTION, "model": "retired"})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "llm_unavailable"
    assert "does not serve model 'retired'" in error["message"] and "it serves: smollm2, rag, legal" in error["message"]
    assert stub.models() == ["retired"]


@pytest.fixture
def sdk(service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)


def test_chat_completions_send_the_chosen_model(sdk, stub):
    messages = [{"role": "user", "content": QUESTION}]
    default = sdk.chat.completions.create(model="ragtune", messages=messages)
    adapter = sdk.chat.completions.create(model="rag", messages=messages)
    chunks = list(sdk.chat.completions.create(model="legal", messages=messages, stream=True))
    assert (default.model, adapter.model, chunks[-1].model) == ("ragtune", "rag", "legal")
    assert adapter.choices[0].message.content.startswith("Port 19530 [1].")
    assert stub.models() == ["smollm2", "rag", "legal"]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_completions_refuse_an_unknown_model_with_a_400(sdk, stub, stream):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}], stream=stream)
    assert refused.value.status_code == 400
    error = refused.value.body  # the SDK unwraps {"error": {...}}
    assert error["code"] == "model_not_found"
    assert all(repr(name) in error["message"] for name in ALLOWED), error["message"]
    assert stub.requests == []


def test_with_the_extractive_generator_only_the_default_is_allowed(indexed):
    assert [m["id"] for m in indexed.http.get("/v1/models").json()["data"]] == ["ragtune"]
    assert indexed.http.post("/v1/query", json={"question": QUESTION, "model": "ragtune"}).status_code == 200
    response = indexed.http.post("/v1/query", json={"question": QUESTION, "model": "rag"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert "choose one of 'ragtune'" in error["message"] and "extractive generator has one model" in error["message"]
    chat = {"model": "rag", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    streamed = indexed.http.post("/v1/chat/completions", json=chat)
    assert streamed.status_code == 400 and json.loads(streamed.text)["error"]["code"] == "model_not_found"
