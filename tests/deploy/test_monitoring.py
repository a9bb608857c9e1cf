"""Prometheus rules and the Grafana dashboard: promtool checks and unit tests, broken inputs that
must fail, and every metric name checked against the app's contract and a running server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.api.support import free_port

from .deploytools import (
    DASHBOARD,
    DOCKER,
    METRICS,
    PROMETHEUS,
    TARGET_LABELS,
    VENV_BIN,
    clean_env,
    contract_series_names,
    promql_label_names,
    promql_metric_names,
    run,
    tool,
)

RULES = PROMETHEUS / "rules" / "ragtune.rules.yml"
RULE_TESTS = PROMETHEUS / "tests" / "ragtune.rules.test.yml"


def promtool(*args: str, cwd: Path = PROMETHEUS):
    return run([tool("promtool"), *args], cwd=cwd)


def rule_expressions() -> dict[str, str]:
    """name -> PromQL for every recording and alerting rule."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule.get("record") or rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {f"{p['title']} [{t['refId']}]": t["expr"] for p in panels if p["type"] != "row" for t in p["targets"]}


# --- promtool ----------------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS.relative_to(PROMETHEUS)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    alerts = {name for name, _ in rule_expressions().items() if not name.startswith("ragtune:")}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested, f"alerts never shown firing in a unit test: {sorted(alerts - tested)}"


def test_compose_prometheus_config_and_its_rule_files_pass_promtool() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_broken_rule_file_fails_promtool_check(tmp_path: Path) -> None:
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(
        RULES.read_text().replace(
            "(rate(ragtune_http_requests_total[5m]))", "(rate(ragtune_http_requests_total[5m])", 1
        )
    )
    result = promtool("check", "rules", str(broken))
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


def test_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    mutated = RULES.read_text().replace(
        "ragtune:http_errors:ratio_rate5m > 0.05", "ragtune:http_errors:ratio_rate5m > 0.5"
    )
    assert mutated != RULES.read_text()
    (tmp_path / "rules" / RULES.name).write_text(mutated)
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    result = promtool("test", "rules", f"tests/{RULE_TESTS.name}", cwd=tmp_path)
    assert result.returncode != 0
    assert "RagtuneHighErrorRate" in result.stdout + result.stderr


# --- metric names: the contract ----------------------------------------------------------------


def test_promql_reader_finds_metric_names() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, mode) (rate(a_bucket{mode!~"x|y"}[$__rate_interval]))) / b offset 5m > bool 0'
    assert promql_metric_names(expr) == {"a_bucket", "b"}
    assert promql_label_names(expr) == {"le", "mode"}
    assert promql_metric_names("absent(up) or vector(1)") == {"up"}


def _check_names(expressions: dict[str, str], allowed: set[str]) -> None:
    for where, expr in expressions.items():
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        unknown = names - allowed
        assert not unknown, f"{where}: {sorted(unknown)} is not a metric the app exports"
        labels = promql_label_names(expr) - TARGET_LABELS
        known = set().union(*(METRICS.get(_family(n), ("", frozenset()))[1] for n in names))
        assert labels <= known, f"{where}: labels {sorted(labels - known)} are not on {sorted(names)}"


def _family(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series[: -len(suffix)] in METRICS:
            return series[: -len(suffix)]
    return series


def test_rules_use_only_contract_metrics() -> None:
    expressions = rule_expressions()
    recorded = {name for name in expressions if name.startswith("ragtune:")}
    # Recording rules carry their inputs' labels; allow their names and the labels they keep.
    for record in recorded:
        assert record.count(":") == 2, f"{record}: use the level:metric:operations naming"
    raw = {name: expr for name, expr in expressions.items() if not (promql_metric_names(expr) & recorded)}
    _check_names(raw, contract_series_names())
    for name, expr in expressions.items():
        assert promql_metric_names(expr) <= contract_series_names() | recorded, name


def test_dashboard_uses_only_contract_metrics() -> None:
    expressions = dashboard_expressions()
    _check_names(expressions, contract_series_names())
    used = set().union(*(promql_metric_names(e) for e in expressions.values()))
    # The panels the issue asks for: request rate, errors, retrieval / LLM / vector-store latency, jobs.
    for needed in (
        "ragtune_http_requests_total",
        "ragtune_retrieval_duration_seconds_bucket",
        "ragtune_generation_duration_seconds_bucket",
        "ragtune_vectorstore_query_duration_seconds_bucket",
        "ragtune_ingest_jobs",
        "ragtune_ready",
    ):
        assert needed in used, f"no panel shows {needed}"


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"] and panel["targets"], panel["title"]


def test_grafana_provisioning_matches_compose() -> None:
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["grafana"]["volumes"] if m.startswith("../")}
    provider = yaml.safe_load(
        (PROMETHEUS.parent / "grafana" / "provisioning" / "dashboards" / "ragtune.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == "../grafana/dashboards"
    source = yaml.safe_load(
        (PROMETHEUS.parent / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert "prometheus" in services


# --- metric names: a running server ------------------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of `ragtune serve` started for real on a free loopback port."""
    port = free_port()
    data_dir = tmp_path_factory.mktemp("serve-data")
    env = clean_env(
        RAGTUNE_DATA_DIR=str(data_dir), RAGTUNE_TORCH_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
    )
    if "PYTHONPATH" in os.environ:  # serve the source tree under test, not only the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    log = (data_dir / "serve.log").open("w")
    server = subprocess.Popen(
        [str(VENV_BIN / "ragtune"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=data_dir,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(f"{base}/health")[0] == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ragtune serve did not answer /health:\n{(data_dir / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        _get(f"{base}/ready")  # one more route in the request counter
        status, text = _get(f"{base}/metrics")
        assert status == 200, text
        return text
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _exported_series(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Sample names the exposition produces (from its # TYPE lines, so metrics without samples
    count), and the label names seen per metric family."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
            key = f"{family.name}_total"
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
            key = family.name
        else:
            names.add(family.name)
            key = family.name
        labels[key] = {label for sample in family.samples for label in sample.labels} - {"le"}
    return names, labels


def test_contract_metrics_are_served(live_metrics: str) -> None:
    names, labels = _exported_series(live_metrics)
    missing = contract_series_names() - names
    assert not missing, f"the running server does not export {sorted(missing)}"
    for metric, (_kind, expected) in METRICS.items():
        assert labels.get(metric, set()) <= expected, f"{metric}: labels {labels[metric]} vs contract {set(expected)}"
    assert {"route", "method", "status"} <= labels["ragtune_http_requests_total"], "no request was counted"


def test_rules_and_dashboard_name_served_metrics(live_metrics: str) -> None:
    names, _ = _exported_series(live_metrics)
    recorded = {name for name in rule_expressions() if name.startswith("ragtune:")}
    for where, expr in {**rule_expressions(), **dashboard_expressions()}.items():
        unknown = promql_metric_names(expr) - names - recorded
        assert not unknown, f"{where}: {sorted(unknown)} is not in /metrics of a running ragtune"
