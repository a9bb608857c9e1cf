"""deploy/README.md: the files it points at exist, and it covers what a real deployment needs."""

from __future__ import annotations

import re

from .deploytools import DEPLOY, REPO

README = DEPLOY / "README.md"


def test_every_referenced_file_exists() -> None:
    text = README.read_text()
    paths = set(re.findall(r"`((?:docker|helm|prometheus|grafana)/[\w./-]+)`", text))
    paths |= {p.lstrip("/") for p in re.findall(r"`(/\.[\w./-]+)`", text)}
    assert len(paths) >= 8, paths
    for path in paths:
        candidates = [DEPLOY / path, REPO / path]
        assert any(c.exists() for c in candidates), f"deploy/README.md names {path}, which does not exist"


def test_covers_a_real_deployment() -> None:
    text = README.read_text()
    for topic in (
        "kubectl create namespace",
        "cluster.enabled=true",
        "GPU node pool",
        "Ingress with TLS",
        "### Scaling",
        "helm rollback",
        "### Backup of Milvus and PostgreSQL",
        "pg_dump",
        "milvus-backup",
        "vendored stand-ins",
        "docker compose run --rm ragtune ragtune ingest /data",
    ):
        assert topic in text, topic
