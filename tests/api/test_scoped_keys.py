"""API keys with scopes: roles (reader, writer, admin) and collections, over HTTP and the CLI."""

from __future__ import annotations

import json
import sqlite3

import pytest

from ragtune.store.catalog import Catalog
from ragtune.store.keys import KeyStore, hash_key
from tests.api.support import app_client, service_settings, wait_for_job
from tests.api.test_cli_service import ragtune

ADMIN_KEY = "configured-admin-key"
# The same text in both collections, so that the shared copy is as good a match as the finance one.
SECRET_TEXT = (
    "# Quarterly close\n\nThe quarterly close of the zebra ledger happens on the third Tuesday; "
    "the zebra ledger is reconciled by the treasury team before the auditors arrive.\n"
)
QUESTION = "When is the quarterly close of the zebra ledger?"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(client, key: str, path: str, name: str, text: str, **form) -> dict:
    response = client.post(path, files=[("files", (name, text.encode()))], data=form, headers=bearer(key))
    assert response.status_code == 202, response.text
    job = wait_for_job(_Authed(client, key), response.json()["job_id"])
    assert job["state"] == "done" and job["files_failed"] == 0, job
    return response.json()


class _Authed:
    """A client whose GETs carry a key (what `wait_for_job` polls with)."""

    def __init__(self, client, key: str) -> None:
        self.client, self.key = client, key

    def get(self, path: str, **kwargs):
        return self.client.get(path, headers=bearer(self.key), **kwargs)


@pytest.fixture(scope="module")
def scoped(tmp_path_factory, embedder):
    settings = service_settings(tmp_path_factory.mktemp("scoped") / "data", api_keys=ADMIN_KEY)
    with app_client(settings, embedder) as client:
        services = client.app.state.services
        store = KeyStore(services.system.catalog)
        keys = {
            "reader": store.create("finance-reader", "reader", ["finance"]).secret,
            "writer": store.create("finance-writer", "writer", ["finance"]).secret,
            "both": store.create("both", "reader", ["finance", "shared"]).secret,
            "finance_admin": store.create("finance-admin", "admin", ["finance"]).secret,
        }
        services.authenticator.refresh()
        finance = upload(client, ADMIN_KEY, "/v1/collections/finance/documents", "close.md", SECRET_TEXT)
        shared = upload(client, ADMIN_KEY, "/v1/documents", "close.md", SECRET_TEXT, collection="shared")
        yield client, keys, finance["documents"][0]["document_id"], shared["documents"][0]["document_id"]


def test_a_reader_cannot_upload_or_delete_and_a_writer_can(scoped):
    client, keys, finance_id, _ = scoped
    for path in ("/v1/documents", "/v1/collections/finance/documents"):
        refused = client.post(path, files=[("files", ("r.md", b"# R\n\ntext"))], headers=bearer(keys["reader"]))
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "forbidden" and "writer or admin" in error["message"] and "reader" in error["message"]
    deleted = client.delete(f"/v1/documents/{finance_id}", headers=bearer(keys["reader"]))
    assert deleted.status_code == 403 and deleted.json()["error"]["code"] == "forbidden"
    assert client.get(f"/v1/documents/{finance_id}", headers=bearer(keys["reader"])).status_code == 200

    # Without a collection an upload goes to the default one, which this key does not hold.
    files = [("files", ("writer.md", b"# Writer\n\nA writer's note.\n"))]
    elsewhere = client.post("/v1/documents", files=files, headers=bearer(keys["writer"]))
    assert elsewhere.status_code == 403 and "'ragtune'" in elsewhere.json()["error"]["message"]
    added = upload(client, keys["writer"], "/v1/documents", "writer.md", "# Writer\n\nA note.\n", collection="finance")
    assert added["collection"] == "finance"
    doc_id = added["documents"][0]["document_id"]
    assert client.delete(f"/v1/documents/{doc_id}", headers=bearer(keys["writer"])).status_code == 200


def test_a_key_gets_403_on_a_collection_it_does_not_hold(scoped):
    client, keys, _, _ = scoped
    question = {"question": QUESTION}
    for key in ("reader", "writer"):
        for response in (
            client.post("/v1/collections/shared/query", json=question, headers=bearer(keys[key])),
            client.post("/v1/query", json=question | {"collection": "shared"}, headers=bearer(keys[key])),
            client.post(
                "/v1/chat/completions",
                json={"model": "ragtune", "messages": [{"role": "user", "content": QUESTION}], "collection": "shared"},
                headers=bearer(keys[key]),
            ),
            client.get("/v1/collections/shared/documents", headers=bearer(keys[key])),
        ):
            assert response.status_code == 403, response.text
            error = response.json()["error"]
            assert error["code"] == "collection_forbidden" and "'shared'" in error["message"]
            assert "holds: finance" in error["message"]
    files = [("files", ("w.md", b"# W\n\ntext"))]
    for path, form in (("/v1/collections/shared/documents", {}), ("/v1/documents", {"collection": "shared"})):
        refused = client.post(path, files=files, data=form, headers=bearer(keys["writer"]))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "collection_forbidden"


def test_retrieval_never_returns_chunks_of_a_collection_the_key_does_not_hold(scoped):
    client, keys, finance_id, shared_id = scoped
    body = {"question": QUESTION, "retrieve_only": True, "top_k": 20}
    everything = client.post("/v1/query", json=body, headers=bearer(ADMIN_KEY)).json()
    assert {finance_id, shared_id} <= {c["document_id"] for c in everything["retrieved"]}
    for key in ("reader", "writer"):
        for path in ("/v1/query", "/v1/collections/finance/query"):
            found = client.post(path, json=body, headers=bearer(keys[key]))
            assert found.status_code == 200, found.text
            ids = {c["document_id"] for c in found.json()["retrieved"]}
            assert finance_id in ids and shared_id not in ids
            assert {c["collection"] for c in found.json()["retrieved"]} <= {"finance"}
        answered = client.post("/v1/query", json={"question": QUESTION}, headers=bearer(keys[key])).json()
        assert answered["citations"] and {c["document_id"] for c in answered["citations"]} == {finance_id}
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "ragtune", "messages": [{"role": "user", "content": QUESTION}]},
            headers=bearer(keys[key]),
        ).json()
        assert {c["document_id"] for c in chat["citations"]} == {finance_id}
    # A key holding both reads both, and only the one asked for when it names one.
    both = client.post("/v1/query", json=body, headers=bearer(keys["both"])).json()
    assert {finance_id, shared_id} <= {c["document_id"] for c in both["retrieved"]}
    only = client.post("/v1/collections/shared/query", json=body, headers=bearer(keys["both"])).json()
    assert {c["document_id"] for c in only["retrieved"]} == {shared_id}


def test_documents_of_other_collections_are_not_found_nor_listed(scoped):
    client, keys, finance_id, shared_id = scoped
    for method in ("GET", "DELETE"):
        hidden = client.request(method, f"/v1/documents/{shared_id}", headers=bearer(keys["writer"]))
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "document_not_found"
    listed = client.get("/v1/documents", headers=bearer(keys["reader"])).json()
    assert [d["id"] for d in listed["documents"]] == [finance_id] and listed["total"] == 1
    assert listed["documents"][0]["collection"] == "finance"
    everything = client.get("/v1/documents", headers=bearer(ADMIN_KEY)).json()
    assert {finance_id, shared_id} <= {d["id"] for d in everything["documents"]}
    collections = client.get("/v1/collections", headers=bearer(keys["reader"])).json()
    assert [(c["name"], c["documents"]) for c in collections["collections"]] == [("finance", 1)]
    admin_view = {
        c["name"]: c["documents"]
        for c in client.get("/v1/collections", headers=bearer(ADMIN_KEY)).json()["collections"]
    }
    assert admin_view["finance"] == 1 and admin_view["shared"] == 1 and "ragtune" in admin_view


def test_a_job_filing_into_another_collection_is_not_found(scoped):
    client, keys, _, _ = scoped
    job_id = upload(client, ADMIN_KEY, "/v1/collections/shared/documents", "memo.md", "# Memo\n\nShared.\n")["job_id"]
    hidden = client.get(f"/v1/jobs/{job_id}", headers=bearer(keys["reader"]))
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "job_not_found"
    assert client.get(f"/v1/jobs/{job_id}", headers=bearer(keys["both"])).json()["collection"] == "shared"


def test_unknown_and_invalid_collections(scoped):
    client = scoped[0]
    unknown = client.post("/v1/collections/nowhere/query", json={"question": QUESTION}, headers=bearer(ADMIN_KEY))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "collection_not_found"
    assert "finance" in unknown.json()["error"]["message"] and "shared" in unknown.json()["error"]["message"]
    for bad in ("-dash", "a b", "x" * 300, "a/b", "ünï"):
        response = client.post("/v1/query", json={"question": QUESTION, "collection": bad}, headers=bearer(ADMIN_KEY))
        assert response.status_code == 422, (bad, response.text)
        files = [("files", ("b.md", b"# B\n\ntext"))]
        upload_response = client.post("/v1/documents", files=files, data={"collection": bad}, headers=bearer(ADMIN_KEY))
        assert upload_response.status_code == 422, (bad, upload_response.text)
    mismatch = client.post(
        "/v1/collections/finance/query", json={"question": QUESTION, "collection": "shared"}, headers=bearer(ADMIN_KEY)
    )
    assert mismatch.status_code == 422 and mismatch.json()["error"]["code"] == "collection_mismatch"


def test_keys_over_http_are_for_admins(scoped):
    client, keys, _, _ = scoped
    for key in ("reader", "writer"):
        refused = client.get("/v1/keys", headers=bearer(keys[key]))
        assert refused.status_code == 403 and "admin" in refused.json()["error"]["message"]
        assert client.post("/v1/keys", json={"name": "x"}, headers=bearer(keys[key])).status_code == 403
    created = client.post(
        "/v1/keys", json={"name": "new", "role": "reader", "collections": ["shared"]}, headers=bearer(ADMIN_KEY)
    )
    assert created.status_code == 201, created.text
    secret, key_id = created.json()["secret"], created.json()["key"]["id"]
    assert created.json()["key"]["role"] == "reader" and created.json()["key"]["collections"] == ["shared"]
    listed = client.get("/v1/keys", headers=bearer(ADMIN_KEY)).json()["keys"]
    assert key_id in {k["id"] for k in listed} and secret not in json.dumps(listed)
    assert client.get("/v1/collections/shared/documents", headers=bearer(secret)).status_code == 200  # at once
    assert client.get("/v1/collections/finance/documents", headers=bearer(secret)).status_code == 403
    # An admin of finance only sees, makes and revokes keys of finance only.
    finance_admin = bearer(keys["finance_admin"])
    assert key_id not in {k["id"] for k in client.get("/v1/keys", headers=finance_admin).json()["keys"]}
    assert client.delete(f"/v1/keys/{key_id}", headers=finance_admin).status_code == 404
    for body in ({"role": "admin"}, {"collections": ["finance", "shared"]}):
        escalate = client.post("/v1/keys", json=body, headers=finance_admin)
        assert escalate.status_code == 403 and escalate.json()["error"]["code"] == "collection_forbidden"
    bad = client.post("/v1/keys", json={"role": "owner"}, headers=bearer(ADMIN_KEY))
    assert bad.status_code == 422
    bad_name = client.post("/v1/keys", json={"collections": ["no way"]}, headers=bearer(ADMIN_KEY))
    assert bad_name.status_code == 422 and bad_name.json()["error"]["code"] == "invalid_key"
    revoked = client.delete(f"/v1/keys/{key_id}", headers=bearer(ADMIN_KEY))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.get("/v1/collections/shared/documents", headers=bearer(secret)).status_code == 401
    assert client.delete("/v1/keys/nope", headers=bearer(ADMIN_KEY)).status_code == 404


def test_keys_made_before_scopes_keep_full_access(tmp_path, embedder):
    data = tmp_path / "data"
    data.mkdir()
    secret = "rt_made-before-scopes"
    with sqlite3.connect(data / "catalog.db") as db:  # the api_keys table as it was before scopes
        db.execute(
            "CREATE TABLE api_keys (id VARCHAR(16) PRIMARY KEY, name VARCHAR(128), hash VARCHAR(64) UNIQUE, "
            "hint VARCHAR(16), created_at DATETIME, revoked_at DATETIME)"
        )
        db.execute(
            "INSERT INTO api_keys VALUES ('old1', 'legacy', ?, 'rt_made…', '2024-01-01 00:00:00', NULL)",
            (hash_key(secret),),
        )
    [old] = KeyStore(Catalog(f"sqlite:///{data / 'catalog.db'}")).list()
    assert (old.id, old.role, old.collections) == ("old1", "admin", ())
    with app_client(service_settings(data), embedder) as client:
        for path in ("/v1/keys", "/v1/collections", "/v1/documents", "/v1/collections/anything/documents"):
            assert client.get(path, headers=bearer(secret)).status_code == 200, path
        assert client.get("/v1/documents").status_code == 401  # auth is on: the old key exists


def test_cli_keys_create_with_role_and_collections(tmp_path):
    data = tmp_path / "data"
    created = ragtune(
        ["keys", "create", "--name", "finance", "--collections", "finance, shared", "--role", "reader", "--json"], data
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["role"] == "reader" and key["collections"] == ["finance", "shared"] and key["key"].startswith("rt_")
    default = json.loads(ragtune(["keys", "create", "--json"], data).stdout)
    assert default["role"] == "admin" and default["collections"] == []
    listed = ragtune(["keys", "list"], data)
    assert listed.returncode == 0 and "reader" in listed.stdout and "finance,shared" in listed.stdout
    assert [k["role"] for k in json.loads(ragtune(["keys", "list", "--json"], data).stdout)] == ["reader", "admin"]
    for args, message in (
        (["--role", "owner"], "not one of reader, writer, admin"),
        (["--collections", "finance,no way"], "is not a valid name"),
    ):
        refused = ragtune(["keys", "create", *args], data)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr
    assert len(json.loads(ragtune(["keys", "list", "--json"], data).stdout)) == 2  # nothing made by a refusal
