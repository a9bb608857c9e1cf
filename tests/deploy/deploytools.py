"""Paths, tool lookup and the metrics contract shared by the deployment tests.

The tools are real binaries: helm (./tools/helm, from scripts/system-deps/helm.sh), promtool
(Debian `prometheus`, scripts/system-deps/prometheus.sh), and hadolint, docker-compose,
kubernetes-validate, check-jsonschema from the virtual environment (the dev extra). A missing tool
fails the test with the command that installs it: these checks must never pass by being skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKER = DEPLOY / "docker"
CHART = DEPLOY / "helm" / "ragtune"
PROD_VALUES = CHART / "ci" / "values-production.yaml"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "ragtune.json"
VENV_BIN = Path(sys.executable).parent

# Kubernetes API versions the rendered manifests must validate against (the chart's kubeVersion
# says >=1.29): the oldest supported and a recent one.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")

_INSTALL_HINT = {
    "helm": "run `bash scripts/system-deps/helm.sh` (make test does)",
    "promtool": "run `bash scripts/system-deps/prometheus.sh` (make test does)",
}


def tool(name: str) -> str:
    """Absolute path of a tool, or fail with how to install it."""
    candidates = [REPO / "tools" / name, VENV_BIN / name]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found:
        return found
    hint = _INSTALL_HINT.get(name, f"install the dev extra into {VENV_BIN.parent} (pip install -e '.[dev]')")
    pytest.fail(f"{name} is not installed: {hint}", pytrace=False)


def run(
    cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Runs a command and returns it, whatever its exit status (the caller asserts)."""
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment, so no variable of the developer's shell satisfies a check."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


# --- the metrics the app exports (the service's contract) --------------------------------------
# name -> (type, label names). Counters carry their _total suffix as exposed.
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "ragtune_http_requests_total": ("counter", frozenset({"route", "method", "status"})),
    "ragtune_http_request_duration_seconds": ("histogram", frozenset({"route", "method"})),
    "ragtune_retrieval_duration_seconds": ("histogram", frozenset({"mode"})),
    "ragtune_embedding_duration_seconds": ("histogram", frozenset()),
    "ragtune_vectorstore_query_duration_seconds": ("histogram", frozenset({"operation"})),
    "ragtune_generation_duration_seconds": ("histogram", frozenset({"generator"})),
    "ragtune_generation_tokens_total": ("counter", frozenset({"generator"})),
    "ragtune_ingest_jobs": ("gauge", frozenset({"state"})),
    "ragtune_documents": ("gauge", frozenset({"status"})),
    "ragtune_chunks_indexed": ("gauge", frozenset()),
    "ragtune_ready": ("gauge", frozenset()),
}
# Labels Prometheus adds to every scraped series, and the bucket label of histograms.
TARGET_LABELS = frozenset({"instance", "job", "le"})


def contract_series_names() -> set[str]:
    """Every sample name the contract's metrics produce in PromQL."""
    names: set[str] = set()
    for name, (kind, _labels) in METRICS.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


# --- reading PromQL ----------------------------------------------------------------------------
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions, keywords, labels excluded).

    >>> sorted(promql_metric_names('sum by (le) (rate(a_bucket{x="y"}[5m])) / b offset 1h'))
    ['a_bucket', 'b']
    """
    text = _strip_strings(expr)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables ($__rate_interval)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = _GROUPING.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?[smhdwy]?\b", " ", text)  # numbers, durations
    names = set()
    for match in _IDENT.finditer(text):
        following = text[match.end() :].lstrip()
        if following.startswith("("):
            continue  # a function or aggregation
        if match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def promql_label_names(expr: str) -> set[str]:
    """Label names used in matchers and in by/without/on/ignoring/group_* lists."""
    text = _strip_strings(expr)
    labels: set[str] = set()
    for group in _GROUPING.finditer(text):
        labels |= {part.strip() for part in group.group(2).split(",") if part.strip()}
    for matchers in _MATCHERS.finditer(text):
        for part in matchers.group(1).split(","):
            name = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)", part)
            if name:
                labels.add(name.group(1))
    return labels
