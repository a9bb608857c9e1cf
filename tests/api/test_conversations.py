"""Conversations over HTTP: follow-ups rewritten and stored, per-key ownership, chat history,
per-request min_relevance and multi-query, with the rule condenser and an LLM (a stub server)."""

from __future__ import annotations

import json

import pytest

from tests.api.support import app_client, sample_files, service_settings, wait_for_job
from tests.llm_stub import stub_llm

FIRST = "What does the operations guide say about backups?"
FOLLOW_UP = "What does it say about alerts?"
GUIDE = "uploads/operations-guide.pdf"


def sse_done(text: str) -> dict:
    frames = [f for f in text.strip().split("\n\n") if f.startswith("event: done")]
    return json.loads(frames[0].split("data: ", 1)[1])


@pytest.fixture
def conversation(indexed):
    created = indexed.http.post("/v1/conversations", json={})
    assert created.status_code == 201, created.text
    body = created.json()
    yield body["id"]
    indexed.http.delete(f"/v1/conversations/{body['id']}")


def test_a_follow_up_is_rewritten_answered_and_stored(indexed, conversation):
    http = indexed.http
    first = http.post("/v1/query", json={"question": FIRST, "conversation_id": conversation}).json()
    assert first["conversation_id"] == conversation and first["rewritten_question"] is None
    verbatim = http.post("/v1/query", json={"question": FOLLOW_UP}).json()
    follow = http.post("/v1/query", json={"question": FOLLOW_UP, "conversation_id": conversation}).json()
    # "it" became the title of what the first answer cited, and the rewritten question finds the guide
    # again, where the bare follow-up finds nothing.
    topic = first["citations"][0]["title"]
    assert follow["rewritten_question"] == f"What does {topic} say about alerts?"
    assert follow["debug"]["condense"]["condenser"] == "rules"
    assert not follow["abstained"] and follow["citations"][0]["source"] == GUIDE
    assert verbatim["abstained"] and verbatim["rewritten_question"] is None
    assert follow["question"] == FOLLOW_UP

    detail = http.get(f"/v1/conversations/{conversation}").json()
    assert detail["title"] == FIRST
    assert [t["question"] for t in detail["turns"]] == [FIRST, FOLLOW_UP]
    assert detail["turns"][1]["rewritten_question"] == follow["rewritten_question"]
    assert detail["turns"][1]["citations"] == follow["citations"]
    listed = http.get("/v1/conversations").json()
    assert listed["conversations"][0]["id"] == conversation and listed["conversations"][0]["turns"] == 2


def test_regenerate_replaces_the_last_turn_and_streaming_stores_too(indexed, conversation):
    http = indexed.http
    http.post("/v1/query", json={"question": FIRST, "conversation_id": conversation})
    streamed = http.post("/v1/query", json={"question": FOLLOW_UP, "conversation_id": conversation, "stream": True})
    done = sse_done(streamed.text)
    assert done["rewritten_question"] and done["conversation_id"] == conversation
    again = http.post(
        "/v1/query", json={"question": FOLLOW_UP, "conversation_id": conversation, "regenerate": True}
    ).json()
    assert again["rewritten_question"] == done["rewritten_question"]  # read against the first turn only
    turns = http.get(f"/v1/conversations/{conversation}").json()["turns"]
    assert [t["question"] for t in turns] == [FIRST, FOLLOW_UP]


def test_regenerate_needs_an_answer_and_retrieve_only_stores_nothing(indexed, conversation):
    http = indexed.http
    empty = http.post("/v1/query", json={"question": FIRST, "conversation_id": conversation, "regenerate": True})
    assert empty.status_code == 409 and empty.json()["error"]["code"] == "conversation_conflict"
    http.post("/v1/query", json={"question": FIRST, "conversation_id": conversation})
    found = http.post(
        "/v1/query", json={"question": FOLLOW_UP, "conversation_id": conversation, "retrieve_only": True}
    ).json()
    assert found["rewritten_question"] and found["conversation_id"] is None and found["answer"] is None
    assert found["retrieved"][0]["source"] == GUIDE and "rewrite" in found["timings_ms"]
    assert http.get(f"/v1/conversations/{conversation}").json()["turns"][-1]["question"] == FIRST


def test_a_conversation_stored_by_the_library_reads_through_the_api(indexed, conversation):
    # What the CLI does: ask through the pipeline, store the turn with the store's own call.
    services = indexed.services
    answer = services.system.rag.ask(FIRST)
    services.conversations.append(conversation, answer.turn(), answer.citations, answer.abstained)
    turns = indexed.http.get(f"/v1/conversations/{conversation}").json()["turns"]
    assert turns[0]["citations"][0]["document_id"] == answer.citations[0].doc_id


def test_unknown_or_deleted_conversations_are_404_with_a_json_body(indexed):
    http = indexed.http
    created = http.post("/v1/conversations", json={"title": "to delete"}).json()
    assert created["title"] == "to delete" and created["turns"] == 0
    assert http.delete(f"/v1/conversations/{created['id']}").json() == {"id": created["id"], "deleted": True}
    for response in (
        http.get(f"/v1/conversations/{created['id']}"),
        http.delete(f"/v1/conversations/{created['id']}"),
        http.post("/v1/query", json={"question": FIRST, "conversation_id": created["id"]}),
        http.post("/v1/query", json={"question": FIRST, "conversation_id": created["id"], "stream": True}),
    ):
        assert response.status_code == 404 and response.json()["error"]["code"] == "conversation_not_found"
    bad = http.post("/v1/query", json={"question": FIRST, "regenerate": True})
    assert bad.status_code == 422 and "conversation_id" in bad.json()["error"]["message"]


def test_chat_completions_read_the_whole_history(indexed):
    http = indexed.http
    first = http.post(
        "/v1/chat/completions", json={"model": "ragtune", "messages": [{"role": "user", "content": FIRST}]}
    )
    reply = first.json()["choices"][0]["message"]["content"]
    assert "Sources:" in reply
    messages = [
        {"role": "user", "content": FIRST},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": FOLLOW_UP},
    ]
    follow = http.post("/v1/chat/completions", json={"model": "ragtune", "messages": messages}).json()
    topic = first.json()["citations"][0]["title"]
    assert follow["rewritten_question"] == f"What does {topic} say about alerts?"
    assert follow["citations"] and follow["citations"][0]["source"] == GUIDE
    # A chain of follow-ups keeps the first question's subject.
    chained = [*messages, {"role": "assistant", "content": follow["choices"][0]["message"]["content"]}]
    chained.append({"role": "user", "content": "And about upgrades?"})
    third = http.post("/v1/chat/completions", json={"model": "ragtune", "messages": chained}).json()
    assert third["rewritten_question"] == f"What does {topic} say about alerts, and about upgrades?"
    alone = http.post(
        "/v1/chat/completions", json={"model": "ragtune", "messages": [{"role": "user", "content": FOLLOW_UP}]}
    ).json()
    assert alone["rewritten_question"] is None


def test_min_relevance_drops_weak_chunks_and_multi_query_needs_an_llm(indexed):
    http = indexed.http
    loose = http.post("/v1/query", json={"question": FIRST, "retrieve_only": True, "min_relevance": -1.0}).json()
    assert loose["retrieved"] and all("relevance" in h["scores"] for h in loose["retrieved"])
    cut = sorted(h["scores"]["relevance"] for h in loose["retrieved"])[-2]
    strict = http.post("/v1/query", json={"question": FIRST, "retrieve_only": True, "min_relevance": cut}).json()
    assert 1 <= len(strict["retrieved"]) < len(loose["retrieved"])
    assert all(h["scores"]["relevance"] >= cut for h in strict["retrieved"])
    nothing = http.post("/v1/query", json={"question": FIRST, "min_relevance": 0.999}).json()
    assert nothing["abstained"] and nothing["citations"] == []
    refused = http.post("/v1/query", json={"question": FIRST, "multi_query": True})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "multi_query_unavailable"
    assert "RAGTUNE_GENERATOR" in refused.json()["error"]["message"]
    out_of_range = http.post("/v1/query", json={"question": FIRST, "min_relevance": 2})
    assert out_of_range.status_code == 422


def test_conversations_belong_to_the_key_that_started_them(tmp_path, embedder):
    settings = service_settings(tmp_path / "data", api_keys=["key-a", "key-b"])
    with app_client(settings, embedder) as client:
        a, b = ({"Authorization": f"Bearer {k}"} for k in ("key-a", "key-b"))
        mine = client.post("/v1/conversations", json={"title": "a's"}, headers=a).json()
        assert client.get(f"/v1/conversations/{mine['id']}", headers=a).status_code == 200
        assert client.get(f"/v1/conversations/{mine['id']}", headers=b).status_code == 404
        assert client.delete(f"/v1/conversations/{mine['id']}", headers=b).status_code == 404
        asked = client.post("/v1/query", json={"question": "x y", "conversation_id": mine["id"]}, headers=b)
        assert asked.status_code == 404
        assert client.get("/v1/conversations", headers=b).json() == {"conversations": [], "total": 0}
        assert client.get("/v1/conversations", headers=a).json()["total"] == 1


def test_with_an_llm_the_llm_condenses_and_writes_paraphrases(tmp_path, embedder):
    with stub_llm(condensed="What does the operations guide say about alerts?", paraphrases="a\nb") as stub:
        settings = service_settings(
            tmp_path / "data", generator="openai", llm_base_url=stub.url, llm_model="stub-model", llm_max_retries=0
        )
        with app_client(settings, embedder) as client:
            accepted = client.post("/v1/documents", files=sample_files("operations-guide.pdf"))
            assert wait_for_job(client, accepted.json()["job_id"])["state"] == "done"
            conversation = client.post("/v1/conversations", json={}).json()["id"]
            client.post("/v1/query", json={"question": FIRST, "conversation_id": conversation})
            stub.requests.clear()
            body = client.post(
                "/v1/query", json={"question": FOLLOW_UP, "conversation_id": conversation, "multi_query": True}
            ).json()
    assert stub.kinds() == ["condense", "paraphrase", "answer"]
    assert body["rewritten_question"] == "What does the operations guide say about alerts?"
    condense = body["debug"]["condense"]
    assert condense["condenser"] == "llm" and condense["prompt"] == stub.requests[0]["messages"]
    assert FIRST in condense["prompt"][1]["content"]
    assert body["debug"]["multi_query"]["paraphrases"] == ["a", "b"]
    assert all("multi_query_rrf" in h["scores"] for h in body["retrieved"])
    assert body["timings_ms"]["rewrite"] > 0
    # The answer was written for the standalone question, not the bare follow-up.
    asked = stub.requests[2]["messages"][-1]["content"]
    assert body["rewritten_question"] in asked and FOLLOW_UP not in asked


def test_multi_query_without_usable_paraphrases_searches_the_question_alone(tmp_path, embedder):
    with stub_llm(paraphrases="") as stub:
        settings = service_settings(
            tmp_path / "data", generator="openai", llm_base_url=stub.url, llm_model="stub-model", llm_max_retries=0
        )
        with app_client(settings, embedder) as client:
            accepted = client.post("/v1/documents", files=sample_files("operations-guide.pdf"))
            assert wait_for_job(client, accepted.json()["job_id"])["state"] == "done"
            body = client.post("/v1/query", json={"question": FIRST, "multi_query": True}).json()
    assert stub.kinds() == ["paraphrase", "answer"]
    assert body["debug"]["multi_query"]["paraphrases"] == [] and body["retrieved"]
    assert not any("multi_query_rrf" in h["scores"] for h in body["retrieved"])
