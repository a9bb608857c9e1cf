"""Fixtures for the deployment tests: the Helm chart rendered once per session, per values set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .deploytools import CHART, PROD_VALUES, run, tool

RELEASE = "rag"
# The Prometheus Operator API, as `helm template` sees it when the CRD is installed.
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"


class Rendered:
    """The manifests `helm template` produced, with lookups by kind and name."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.docs = [doc for doc in yaml.safe_load_all(text) if doc]

    def kinds(self, kind: str) -> list[dict]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [doc for doc in self.kinds(kind) if doc["metadata"]["name"] == name]
        assert found, f"no {kind} {name!r}; rendered: {[(d['kind'], d['metadata']['name']) for d in self.docs]}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {doc["metadata"]["name"] for doc in self.kinds(kind)}


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm")


@pytest.fixture(scope="session")
def render(helm: str) -> Callable[..., Rendered]:
    """render("-f", file, "--set", "a=b") -> Rendered; fails the test when helm fails."""
    cache: dict[tuple[str, ...], Rendered] = {}

    def _render(*args: str) -> Rendered:
        if args not in cache:
            result = run([helm, "template", RELEASE, str(CHART), "--namespace", "ragtune", *args])
            assert result.returncode == 0, f"helm template {' '.join(args)} failed:\n{result.stderr}"
            cache[args] = Rendered(result.stdout)
        return cache[args]

    return _render


@pytest.fixture(scope="session")
def default_render(render: Callable[..., Rendered]) -> Rendered:
    return render()


@pytest.fixture(scope="session")
def production_render(render: Callable[..., Rendered]) -> Rendered:
    return render("-f", str(PROD_VALUES), "--api-versions", SERVICE_MONITOR_API)


def write_values(tmp_path: Path, values: dict, name: str = "values.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path
