"""The HTTP API fuzzed from its own OpenAPI schema (Schemathesis): whatever a client sends, no
5xx, every error a JSON body with a code and a message, and every response as the schema says.

Bounded: a few generated requests per operation, against a real server on loopback whose
store holds the sample documents (so queries, documents and jobs have something to return).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.api.support import Service, sample_files, served, service_settings, wait_for_job


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, embedder) -> Iterator[Service]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    with served(service_settings(data, max_upload_bytes=64 * 1024, max_body_bytes=64 * 1024), embedder) as service:
        accepted = service.http.post("/v1/documents", files=sample_files())
        assert accepted.status_code == 202, accepted.text
        wait_for_job(service.http, accepted.json()["job_id"])
        yield service


@pytest.fixture(scope="module")
def api_schema(fuzzed: Service):
    return schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")


def _errors_are_json(response, case) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(
            f"{case.method} {case.formatted_path}: {response.status_code} without a JSON body"
        ) from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and error.get("code") and error.get("message"), (
        f"{case.method} {case.formatted_path}: {response.status_code} body {body!r} has no error code and message"
    )


def _fuzz(operation, mode: GenerationMode, base_url: str, statuses: list[tuple[str, int]]) -> None:
    @settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case) -> None:
        response = case.call(base_url=base_url, timeout=60)
        statuses.append((operation.label, response.status_code))
        case.validate_response(
            response, checks=[not_a_server_error, content_type_conformance, response_schema_conformance]
        )
        _errors_are_json(response, case)

    call()


def test_api_survives_generated_requests(fuzzed: Service, api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    paths = fuzzed.app.openapi()["paths"].values()
    assert len(operations) == sum(len(methods) for methods in paths)  # the whole API, not a part of it
    statuses: list[tuple[str, int]] = []
    for operation in operations:
        _fuzz(operation, GenerationMode.POSITIVE, fuzzed.url, statuses)
        # Requests the schema forbids; Unsatisfiable where it forbids nothing (no parameters, any string valid).
        with contextlib.suppress(Unsatisfiable):
            _fuzz(operation, GenerationMode.NEGATIVE, fuzzed.url, statuses)
    assert {label for label, _ in statuses} == {operation.label for operation in operations}
    assert any(status == 422 for _, status in statuses) and any(status == 200 for _, status in statuses)


def test_the_checks_catch_a_response_that_breaks_the_schema(fuzzed: Service, api_schema):
    """The fuzz test can fail: a document listing whose shape is not the schema's is caught."""
    operation = api_schema["/v1/documents"]["GET"]
    case = operation.Case(query={"limit": 1})
    response = case.call(base_url=fuzzed.url)
    broken = schemathesis.Response(
        status_code=200,
        headers={"content-type": ["application/json"]},
        content=b'{"documents": "not a list"}',
        request=response.request,
        elapsed=response.elapsed,
        verify=response.verify,
    )
    case.validate_response(response, checks=[response_schema_conformance])  # the real one conforms
    with pytest.raises(BaseException) as caught:  # a FailureGroup, a BaseExceptionGroup
        case.validate_response(broken, checks=[response_schema_conformance])
    failures = getattr(caught.value, "exceptions", [caught.value])  # a group of every failure found
    assert any('"not a list" is not of type "array"' in str(failure) for failure in failures)
