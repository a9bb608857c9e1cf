"""Rate limits without API keys, bounded numeric parameters, honest 413s and questions
with nothing to search for."""

from __future__ import annotations

import pytest

from ragtune.api.errors import ApiError
from ragtune.api.uploads import check_upload
from ragtune.types import QuestionError, check_question
from tests.api.support import app_client, service_settings


@pytest.fixture(scope="module")
def open_client(tmp_path_factory, embedder):
    """No API keys; a small rate limit and upload limit."""
    settings = service_settings(
        tmp_path_factory.mktemp("open") / "data", rate_limit_per_minute=60, rate_limit_burst=5, max_upload_bytes=100
    )
    with app_client(settings, embedder) as client:
        yield client


def test_without_keys_the_rate_limit_holds_per_client_address(open_client):
    open_client.app.state.limiter._buckets.clear()  # a full bucket, whatever ran before
    statuses = [open_client.get("/v1/models").status_code for _ in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
    refused = open_client.get("/v1/models")
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == "rate_limited"
    assert "client address testclient" in error["message"] and "60 requests per minute" in error["message"]
    assert "API key" not in error["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    # Exempt paths are not limited, as with keys on.
    for path in ("/health", "/ready", "/metrics"):
        assert open_client.get(path).status_code == 200, path
    open_client.app.state.limiter._buckets.clear()


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/documents", {"offset": 10**30}),
        ("/v1/documents", {"offset": -1}),
        ("/v1/documents", {"limit": 10**30}),
        ("/v1/conversations", {"offset": 10**30}),
        ("/v1/conversations", {"limit": 10**30}),
    ],
)
def test_huge_numeric_query_parameters_are_422_not_500(open_client, path, params):
    open_client.app.state.limiter._buckets.clear()
    response = open_client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    "body",
    [
        {"question": "hi", "top_k": 10**30},
        {"model": "ragtune", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**30},
        {"model": "ragtune", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 10**30},
    ],
)
def test_huge_numeric_body_fields_are_422(open_client, body):
    open_client.app.state.limiter._buckets.clear()
    path = "/v1/query" if "question" in body else "/v1/chat/completions"
    response = open_client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_an_oversized_upload_names_its_real_size(open_client):
    open_client.app.state.limiter._buckets.clear()
    response = open_client.post("/v1/documents", files=[("files", ("big.txt", b"word " * 100))])
    assert response.status_code == 413, response.text
    message = response.json()["error"]["message"]
    assert "big.txt is 500 bytes, over the upload limit of 100 bytes" in message and "101" not in message


def test_an_upload_read_only_to_the_limit_says_over_not_a_wrong_size(settings):
    limit = settings.service.max_upload_bytes
    with pytest.raises(ApiError) as refused:
        check_upload(b"x" * (limit + 1), "big.txt", settings)  # size unknown: reading stopped at limit + 1
    assert f"big.txt is over {limit} bytes, the upload limit" in str(refused.value.detail)
    assert str(limit + 1) not in str(refused.value.detail)
    with pytest.raises(ApiError) as sized:
        check_upload(b"x" * (limit + 1), "big.txt", settings, size=3 * limit)
    assert f"big.txt is {3 * limit} bytes" in str(sized.value.detail)


@pytest.mark.parametrize("question", ["?!.", "...", "¿?", " - ", "!!! ???"])
def test_a_question_without_letters_or_digits_is_refused(question):
    with pytest.raises(QuestionError, match="no letters or digits"):
        check_question(question)


@pytest.mark.parametrize("question", ["Why?", "42?", "¿Qué?", "什么?"])
def test_a_question_with_a_letter_or_digit_is_kept(question):
    assert check_question(f"  {question} ") == question


@pytest.mark.parametrize("question", ["?!.", "...", "¿?"])
def test_the_api_refuses_a_punctuation_only_question_with_422(open_client, question):
    open_client.app.state.limiter._buckets.clear()
    response = open_client.post("/v1/query", json={"question": question})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_question" and "no letters or digits" in error["message"]
    chat = open_client.post(
        "/v1/chat/completions", json={"model": "ragtune", "messages": [{"role": "user", "content": question}]}
    )
    assert chat.status_code == 422, chat.text
    assert chat.json()["error"]["code"] == "invalid_question"
