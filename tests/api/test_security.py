"""API keys, rate limits, body limits and CORS."""

from __future__ import annotations

import time

import pytest

from ragtune.api.security import path_is_exempt
from ragtune.store.keys import KeyStore
from tests.api.support import app_client, service_settings, wait_until

CONFIGURED_KEY = "configured-key-123"
LIMITED_KEY = "limited-key"  # used by the rate-limit test only: its bucket starts full


@pytest.fixture(scope="module")
def secured(tmp_path_factory, embedder):
    settings = service_settings(
        tmp_path_factory.mktemp("secured") / "data",
        api_keys=f"{CONFIGURED_KEY}, second-key,{LIMITED_KEY}",
        rate_limit_per_minute=60,
        rate_limit_burst=5,
        max_body_bytes=4096,
    )
    with app_client(settings, embedder) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", ["/v1/documents", "/v1/jobs/x", "/v1/models", "/v1/documents/abc"])
def test_every_api_route_needs_a_key(secured, path):
    for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {CONFIGURED_KEY}"}):
        response = secured.get(path, headers=headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert (
            response.json()["error"]["code"] == "unauthorized"
            and "Authorization: Bearer" in response.json()["error"]["message"]
        )
    refused = secured.post("/v1/query", json={"question": "hi"})
    assert refused.status_code == 401


def test_probes_metrics_and_ui_shell_need_no_key(secured):
    for path in ("/health", "/ready", "/metrics", "/", "/ui/app.js", "/docs", "/openapi.json"):
        assert secured.get(path).status_code == 200, path
    assert "ragtune_http_requests_total" in secured.get("/metrics").text


def test_configured_and_stored_keys_work_until_revoked(secured):
    assert secured.get("/v1/documents", headers=bearer("second-key")).status_code == 200
    keys = KeyStore(secured.app.state.services.system.catalog)
    created = keys.create("ci")
    # A running server picks up keys made by `ragtune keys create` within seconds.
    wait_until(
        lambda: secured.get("/v1/documents", headers=bearer(created.secret)).status_code == 200,
        10,
        "the new key to work",
    )
    keys.revoke(created.key.id)
    wait_until(
        lambda: secured.get("/v1/documents", headers=bearer(created.secret)).status_code == 401,
        10,
        "the revoked key to fail",
    )
    with pytest.raises(KeyError, match="ragtune keys list"):
        keys.revoke("nope")


def test_rate_limit_per_key_answers_429_with_retry_after(secured):
    limited_key = LIMITED_KEY
    statuses = [secured.get("/v1/models", headers=bearer(limited_key)).status_code for _ in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
    refused = secured.get("/v1/models", headers=bearer(limited_key))
    assert (
        refused.json()["error"]["code"] == "rate_limited"
        and "60 requests per minute" in refused.json()["error"]["message"]
    )
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    # Another key has its own bucket.
    assert secured.get("/v1/models", headers=bearer(CONFIGURED_KEY)).status_code == 200
    time.sleep(1.1)  # 60/min refills one request a second
    assert secured.get("/v1/models", headers=bearer(limited_key)).status_code == 200


def test_json_body_limit_before_and_while_reading(secured):
    big = {"question": "x" * 5000}
    with_length = secured.post("/v1/query", json=big, headers=bearer(CONFIGURED_KEY))
    assert with_length.status_code == 413 and "RAGTUNE_MAX_BODY_BYTES" in with_length.json()["error"]["message"]

    def chunked():  # no Content-Length: the limit applies while the body streams in
        yield b'{"question": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    streamed = secured.post(
        "/v1/query", content=chunked(), headers=bearer(CONFIGURED_KEY) | {"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "payload_too_large"


def test_cors_is_closed_by_default(secured):
    preflight = secured.options(
        "/v1/query", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    simple = secured.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_configured_origins(tmp_path, embedder):
    settings = service_settings(tmp_path / "data", cors_origins="https://app.example")
    with app_client(settings, embedder) as client:
        allowed = client.options(
            "/v1/query",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = client.options(
            "/v1/query", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        # Without keys configured, the API is open (the local default).
        assert client.get("/v1/documents").status_code == 200


def test_exempt_path_patterns():
    patterns = ["/health", "/ui/*", "/"]
    assert (
        path_is_exempt("/health", patterns) and path_is_exempt("/ui/app.js", patterns) and path_is_exempt("/", patterns)
    )
    assert not path_is_exempt("/healthz", patterns) and not path_is_exempt("/v1/documents", patterns)
