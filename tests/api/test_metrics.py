"""/metrics: every contract metric, route templates as labels, promtool, and a real Prometheus scrape."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ragtune.api.metrics import ServiceMetrics
from tests.api.support import free_port, wait_until

CONTRACT = {
    "ragtune_http_requests": ("counter", {"route", "method", "status"}),
    "ragtune_http_request_duration_seconds": ("histogram", {"route", "method"}),
    "ragtune_retrieval_duration_seconds": ("histogram", {"mode"}),
    "ragtune_embedding_duration_seconds": ("histogram", set()),
    "ragtune_vectorstore_query_duration_seconds": ("histogram", {"operation"}),
    "ragtune_generation_duration_seconds": ("histogram", {"generator"}),
    "ragtune_generation_tokens": ("counter", {"generator"}),
    "ragtune_ingest_jobs": ("gauge", {"state"}),
    "ragtune_documents": ("gauge", {"status"}),
    "ragtune_chunks_indexed": ("gauge", set()),
    "ragtune_ready": ("gauge", set()),
}


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


@pytest.fixture(scope="module")
def scraped(indexed) -> str:
    http = indexed.http
    doc_id = http.get("/v1/documents").json()["documents"][0]["id"]
    http.get(f"/v1/documents/{doc_id}")
    http.get("/v1/documents/not-a-document")
    http.post("/v1/query", json={"question": "Which Milvus URI selects a server?"})
    http.post("/v1/query", json={"question": "BM25", "retrieve_only": True, "mode": "bm25"})
    http.get("/no/such/path")
    return http.get("/metrics").text


def test_every_contract_metric_is_exported_with_its_labels(scraped):
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    for name, (kind, labels) in CONTRACT.items():
        assert name in families, f"{name} missing from /metrics"
        family = families[name]
        assert family.type == kind, name
        label_sets = {frozenset(k for k in s.labels if k not in ("le",)) for s in family.samples}
        assert label_sets == {frozenset(labels)}, (name, label_sets)


def test_values_reflect_the_service(scraped, indexed):
    values = samples(scraped)
    routes = {labels["route"] for labels, _ in values["ragtune_http_requests_total"]}
    assert {"/v1/documents", "/v1/documents/{id}", "/v1/query", "/v1/jobs/{id}", "unmatched"} <= routes
    assert not any("not-a-document" in r or r.startswith("/no/") for r in routes)  # templates, never raw paths
    statuses = {(labels["route"], labels["status"]) for labels, _ in values["ragtune_http_requests_total"]}
    assert ("/v1/documents/{id}", "404") in statuses and ("/v1/documents", "202") in statuses

    counts = indexed.services.system.catalog.counts()
    gauge = {
        labels.get("status") or labels.get("state"): v
        for labels, v in values["ragtune_documents"] + values["ragtune_ingest_jobs"]
    }
    assert gauge["indexed"] == counts["indexed"] == 5 and gauge["failed"] == 0 and gauge["done"] >= 1
    assert values["ragtune_chunks_indexed"][0][1] == counts["chunks"] > 0
    assert values["ragtune_ready"][0][1] == 1.0

    operations = {labels["operation"] for labels, _ in values["ragtune_vectorstore_query_duration_seconds_count"]}
    assert {"search_dense", "search_bm25", "insert", "delete"} <= operations
    modes = {labels["mode"]: v for labels, v in values["ragtune_retrieval_duration_seconds_count"]}
    assert modes["hybrid"] >= 1 and modes["bm25"] >= 1
    assert values["ragtune_embedding_duration_seconds_count"][0][1] > 1
    assert {labels["generator"]: v for labels, v in values["ragtune_generation_tokens_total"]}["extractive"] > 0


def test_each_app_has_its_own_registry():
    first, second = ServiceMetrics(), ServiceMetrics()
    first.observe_request("/health", "GET", 200, 0.001)
    assert b'ragtune_http_requests_total{method="GET",route="/health",status="200"} 1.0' in first.render()
    assert b'route="/health"' not in second.render()


def test_promtool_accepts_the_exposition(scraped, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/system-deps/prometheus.sh installs it)")
    result = subprocess.run([promtool, "check", "metrics"], input=scraped, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def prometheus(indexed, tmp_path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (scripts/system-deps/prometheus.sh installs it)")
    target = indexed.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        textwrap.dedent(
            f"""\
            global:
              scrape_interval: 1s
            scrape_configs:
              - job_name: ragtune
                static_configs:
                  - targets: ["{target}"]
            """
        )
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


def test_a_real_prometheus_scrapes_and_queries_the_service(prometheus, indexed):
    indexed.http.post("/v1/query", json={"question": "How do I start the demo?"})

    def query(expression: str) -> list[dict]:
        try:
            body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=5).json()
        except httpx.HTTPError:
            return []  # not up yet
        return body["data"]["result"] if body.get("status") == "success" else []

    up = wait_until(lambda: query('up{job="ragtune"} == 1'), 60, "Prometheus to scrape the service")
    assert up[0]["metric"]["instance"] == indexed.url.removeprefix("http://")
    ready = wait_until(lambda: query("ragtune_ready"), 30, "ragtune_ready in Prometheus")
    assert ready[0]["value"][1] == "1"
    answered = wait_until(
        lambda: query('sum(ragtune_http_requests_total{route="/v1/query",status="200"})'),
        30,
        "request counts in Prometheus",
    )
    assert float(answered[0]["value"][1]) >= 1
