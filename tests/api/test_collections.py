"""Collections and custom metadata over HTTP: uploads into a collection with metadata, metadata
filters on questions (equal, any of, ranges), and values that try to escape the filter expression."""

from __future__ import annotations

import json

import pytest

from tests.api.support import app_client, service_settings, wait_for_job

TEXT = "# Travel policy\n\nEmployees book economy flights for trips under six hours, {who}.\n"
QUESTION = "Which flights do employees book for trips under six hours?"
# Values that would end or widen a store expression were they pasted into it.
HOSTILE = ['"] or 1==1 or ["', "it's", 'say "hi"', "back\\slash", "trailing\\", "%_*", "' or ''='"]


def ingest(client, name: str, metadata: dict | None = None, path: str = "/v1/documents", **form) -> dict:
    if metadata is not None:
        form["metadata"] = json.dumps(metadata)
    response = client.post(path, files=[("files", (name, TEXT.format(who=name).encode()))], data=form)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"])
    assert job["state"] == "done" and job["files_failed"] == 0, job
    return response.json()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, embedder):
    settings = service_settings(tmp_path_factory.mktemp("collections") / "data")
    with app_client(settings, embedder) as client:
        ids = {}
        for name, metadata in (
            ("finance-2022.md", {"team": "finance", "year": 2022, "public": False}),
            ("finance-2024.md", {"team": "finance", "year": 2024, "public": True}),
            ("hr-2023.md", {"team": "hr", "year": 2023, "score": 4.5}),
        ):
            ids[name] = ingest(client, name, metadata, collection="policies")["documents"][0]["document_id"]
        for i, value in enumerate(HOSTILE):
            ids[value] = ingest(client, f"hostile-{i}.md", {"team": value}, "/v1/collections/policies/documents")[
                "documents"
            ][0]["document_id"]
        ids["default"] = ingest(client, "default.md", {"team": "finance"})["documents"][0]["document_id"]
        yield client, ids


def found(client, metadata: dict, collection: str | None = "policies") -> set[str]:
    body = {"question": QUESTION, "retrieve_only": True, "top_k": 50, "filters": {"metadata": metadata}}
    if collection:
        body["collection"] = collection
    response = client.post("/v1/query", json=body)
    assert response.status_code == 200, response.text
    return {c["document_id"] for c in response.json()["retrieved"]}


def test_uploads_carry_their_collection_and_metadata(labelled):
    client, ids = labelled
    doc = client.get(f"/v1/documents/{ids['finance-2024.md']}").json()
    assert doc["collection"] == "policies" and doc["metadata"] == {"team": "finance", "year": 2024, "public": True}
    default = client.get(f"/v1/documents/{ids['default']}").json()
    assert default["collection"] == "ragtune"  # RAGTUNE_COLLECTION, the default
    listed = client.get("/v1/collections/policies/documents", params={"limit": 500}).json()
    assert listed["total"] == 3 + len(HOSTILE) and {d["collection"] for d in listed["documents"]} == {"policies"}
    collections = client.get("/v1/collections").json()
    assert collections["default"] == "ragtune"
    assert {c["name"]: c["documents"] for c in collections["collections"]} == {
        "policies": 3 + len(HOSTILE),
        "ragtune": 1,
    }
    retrieved = client.post(
        "/v1/collections/policies/query", json={"question": QUESTION, "retrieve_only": True, "top_k": 50}
    ).json()["retrieved"]
    assert retrieved and {c["collection"] for c in retrieved} == {"policies"}
    assert ids["default"] not in {c["document_id"] for c in retrieved}


def test_metadata_filters_equal_any_of_and_ranges(labelled):
    client, ids = labelled
    f22, f24, hr = ids["finance-2022.md"], ids["finance-2024.md"], ids["hr-2023.md"]
    assert found(client, {"team": "finance"}) == {f22, f24}
    assert found(client, {"team": "finance"}, collection=None) == {f22, f24, ids["default"]}
    assert found(client, {"team": ["finance", "hr"]}) == {f22, f24, hr}
    assert found(client, {"team": {"in": ["hr"]}}) == {hr}
    assert found(client, {"year": {"gte": 2023}}) == {f24, hr}
    assert found(client, {"year": {"gt": 2022, "lt": 2024}}) == {hr}
    assert found(client, {"year": {"lte": 2022}, "team": "finance"}) == {f22}
    assert found(client, {"public": True}) == {f24}
    assert found(client, {"score": {"gte": 4.0}}) == {hr}
    assert found(client, {"team": {"ne": "finance"}, "year": {"gte": 2000}}) == {hr}
    assert found(client, {"team": "nobody"}) == set()
    assert found(client, {"missing_key": "x"}) == set()


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_match_only_literally(labelled, value):
    client, ids = labelled
    assert found(client, {"team": value}) == {ids[value]}
    assert found(client, {"team": [value, "nobody"]}) == {ids[value]}
    doc = client.get(f"/v1/documents/{ids[value]}").json()
    assert doc["metadata"] == {"team": value}


@pytest.mark.parametrize(
    "value", ['" or "1"=="1', "x' || 'a", 'finance" or team != "', "finance\\", '\\"', "') or ('1", "\u0000"]
)
def test_injection_attempts_in_filters_match_nothing_and_never_fail(labelled, value):
    client, _ = labelled
    body = {"question": QUESTION, "retrieve_only": True, "filters": {"metadata": {"team": value}}}
    response = client.post("/v1/query", json=body)
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        assert response.json()["retrieved"] == []


@pytest.mark.parametrize(
    "metadata",
    [
        {"year": {"gte": "2023"}},
        {"bad key": "x"},
        {"team": {"like": "fin%"}},
        {"team": {"in": []}},
        {"team": {"eq": {"nested": 1}}},
        {"team": {}},
        {"team": None},
        {"team": "x" * 300},
        {"team": "two\nlines"},
        {"year": {"gte": True}},
        {"1team": "x"},
        {'team"]': "x"},
    ],
)
def test_a_bad_metadata_filter_is_a_422(labelled, metadata):
    client, _ = labelled
    body = {"question": QUESTION, "filters": {"metadata": metadata}}
    response = client.post("/v1/query", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_filter" and response.json()["error"]["message"]
    streamed = client.post("/v1/query", json=body | {"stream": True})
    assert streamed.status_code == 422


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '"text"',
        '{"team": {"nested": 1}}',
        '{"team": [1, 2]}',
        '{"bad key": 1}',
        '{"team": null}',
        '{"team": "two\\nlines"}',
        json.dumps({f"k{i}": i for i in range(40)}),
        "[" * 100_000,
    ],
)
def test_bad_upload_metadata_is_a_422(labelled, raw):
    client, _ = labelled
    response = client.post("/v1/documents", files=[("files", ("m.md", b"# M\n\ntext"))], data={"metadata": raw})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_metadata" and response.json()["error"]["message"]
