"""Questions over HTTP: answers with citations, retrieval only, SSE, and the OpenAI API via its SDK."""

from __future__ import annotations

import json

import openai
import pytest


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for frame in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_answer_cites_its_source_with_page_and_snippet(indexed):
    response = indexed.http.post("/v1/query", json={"question": "What does the operations guide say about backups?"})
    assert response.status_code == 200
    body = response.json()
    assert not body["abstained"] and "[1]" in body["answer"]
    first = body["citations"][0]
    assert first["number"] == 1 and first["source"] == "uploads/operations-guide.pdf" and first["page"] == 1
    assert first["snippet"] and first["chunk_id"].startswith(first["document_id"])
    assert first["chunk_id"] in {h["chunk_id"] for h in body["retrieved"]}
    assert set(body["timings_ms"]) == {"retrieve", "generate", "total"}

    server = indexed.http.post(
        "/v1/query", json={"question": "Which Milvus URI selects a server?", "top_k": 3, "mode": "bm25"}
    ).json()
    assert "19530" in server["answer"] and len(server["retrieved"]) == 3
    assert all(set(h["scores"]) == {"bm25"} for h in server["retrieved"])


def test_off_topic_question_abstains(indexed):
    body = indexed.http.post("/v1/query", json={"question": "What is the boiling point of liquid nitrogen?"}).json()
    assert body["abstained"] and body["citations"] == []


def test_retrieve_only_with_filters(indexed):
    body = indexed.http.post(
        "/v1/query",
        json={
            "question": "retrieval latency alert",
            "retrieve_only": True,
            "top_k": 2,
            "filters": {"sources": ["uploads/operations-guide.pdf"]},
        },
    ).json()
    assert body["answer"] is None and body["citations"] == [] and set(body["timings_ms"]) == {"retrieve"}
    assert len(body["retrieved"]) == 2 and {h["source"] for h in body["retrieved"]} == {"uploads/operations-guide.pdf"}
    none = indexed.http.post(
        "/v1/query", json={"question": "anything", "retrieve_only": True, "filters": {"tags": ["no-such-tag"]}}
    ).json()
    assert none["retrieved"] == []


def test_stream_sends_tokens_then_the_full_answer(indexed):
    question = {"question": "How many characters do neighbouring chunks share by default?", "stream": True}
    with indexed.http.stream("POST", "/v1/query", json=question) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"token"} and len(names) >= 2
    done = events[-1][1]
    assert "".join(data["text"] for name, data in events if name == "token") == done["answer"]
    assert "200" in done["answer"] and done["citations"][0]["number"] == 1 and done["retrieved"]
    assert set(done["timings_ms"]) == {"retrieve", "generate", "total"}


def test_stream_errors_before_the_first_byte_are_plain_http_errors(indexed):
    too_long = indexed.http.post("/v1/query", json={"question": "why " * 2000, "stream": True})
    assert too_long.status_code == 422 and too_long.headers["content-type"] == "application/json"
    assert too_long.json()["error"]["code"] == "invalid_question"
    both = indexed.http.post("/v1/query", json={"question": "hi", "stream": True, "retrieve_only": True})
    assert both.status_code == 422 and "set one of them" in both.json()["error"]["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"question": "hi", "topk": 3}, "topk"),
        ({"question": "hi", "top_k": 0}, "top_k"),
        ({"question": "hi", "mode": "fuzzy"}, "mode"),
        ({"question": ""}, "question"),
        ({"question": "hi", "filters": {"source": ["x"]}}, "filters.source"),
        ({}, "question"),
    ],
)
def test_invalid_requests_are_422_naming_the_field(indexed, payload, field):
    response = indexed.http.post("/v1/query", json=payload)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and field in error["message"]


def test_malformed_json_is_a_422(indexed):
    response = indexed.http.post("/v1/query", content=b'{"question": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def sdk(indexed) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{indexed.url}/v1", api_key="not-needed-when-auth-is-off", max_retries=0)


def test_openai_sdk_chat_completion(sdk):
    completion = sdk.chat.completions.create(
        model="ragtune",
        messages=[
            {"role": "system", "content": "Answer from the documents."},
            {"role": "user", "content": "Which Milvus URI selects a server?"},
        ],
        temperature=0.2,  # accepted and ignored: the answer is extractive
    )
    content = completion.choices[0].message.content
    assert "19530" in content and "\n\nSources:\n[1] uploads/" in content
    assert completion.choices[0].finish_reason == "stop" and completion.model == "ragtune"
    assert completion.usage.completion_tokens > 0 and completion.usage.total_tokens > completion.usage.prompt_tokens
    citations = completion.model_extra["citations"]
    assert citations[0]["number"] == 1 and citations[0]["source"].startswith("uploads/")


def test_openai_sdk_streaming_matches_the_plain_answer(sdk):
    messages = [{"role": "user", "content": "How many characters do neighbouring chunks share by default?"}]
    plain = sdk.chat.completions.create(model="ragtune", messages=messages).choices[0].message.content
    chunks = list(sdk.chat.completions.create(model="ragtune", messages=messages, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain
    assert chunks[-1].choices[0].finish_reason == "stop" and len(chunks) >= 4  # role, answer pieces, sources, end


def test_openai_sdk_max_tokens_cuts_with_length(sdk):
    completion = sdk.chat.completions.create(
        model="ragtune", messages=[{"role": "user", "content": "Which Milvus URI selects a server?"}], max_tokens=3
    )
    assert completion.choices[0].finish_reason == "length" and len(completion.choices[0].message.content.split()) == 3


def test_openai_sdk_models_and_errors(sdk):
    assert [m.id for m in sdk.models.list()] == ["ragtune"]
    with pytest.raises(openai.BadRequestError) as unknown:
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "model 'gpt-4o' is not served here; choose one of 'ragtune'" in unknown.value.message
    with pytest.raises(openai.UnprocessableEntityError) as no_question:
        sdk.chat.completions.create(model="ragtune", messages=[{"role": "system", "content": "be brief"}])
    assert "role 'user'" in no_question.value.message


class _CrashingGenerator:
    """Writes the start of an answer, then fails: the failure after the first byte."""

    name = "crashing"
    model_names = ()

    def generate(self, question, hits, model=None):
        raise RuntimeError("the model crashed")

    def stream(self, question, hits, model=None):
        yield "The answer starts "
        raise RuntimeError("the model crashed")


def test_a_failure_mid_stream_is_an_error_event(indexed):
    system = indexed.services.system
    working, system.rag.generator = system.rag.generator, _CrashingGenerator()
    try:
        with indexed.http.stream(
            "POST", "/v1/query", json={"question": "Which Milvus URI selects a server?", "stream": True}
        ) as response:
            assert response.status_code == 200
            events = sse_events(response.read().decode())
    finally:
        system.rag.generator = working
    assert [name for name, _ in events] == ["token", "error"]
    assert events[0][1] == {"text": "The answer starts "}
    assert events[1][1]["error"]["code"] == "stream_failed" and "the model crashed" in events[1][1]["error"]["message"]
