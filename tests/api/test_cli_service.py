"""`ragtune serve` and `ragtune keys` as a user runs them: real processes, real HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import cli_environment
from tests.api.support import free_port, wait_until


def ragtune(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = cli_environment(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "ragtune.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_keys_create_list_revoke(tmp_path):
    data = tmp_path / "data"
    created = ragtune(["keys", "create", "--name", "ci", "--json"], data)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["name"] == "ci" and key["key"].startswith("rt_") and len(key["key"]) > 40

    listed = ragtune(["keys", "list", "--json"], data)
    assert key["key"] not in listed.stdout  # never shown again
    [entry] = json.loads(listed.stdout)
    assert entry["id"] == key["id"] and entry["revoked_at"] is None and key["key"].startswith(entry["hint"].rstrip("…"))

    assert ragtune(["keys", "revoke", key["id"]], data).returncode == 0
    assert json.loads(ragtune(["keys", "list", "--json"], data).stdout)[0]["revoked_at"] is not None
    unknown = ragtune(["keys", "revoke", "nope"], data)
    assert (
        unknown.returncode == 2 and "no API key with id 'nope'" in unknown.stderr and "Traceback" not in unknown.stderr
    )


@pytest.mark.slow
def test_serve_answers_and_enforces_keys_from_the_cli(tmp_path):
    data = tmp_path / "data"
    key = json.loads(ragtune(["keys", "create", "--json"], data).stdout)
    port = free_port()
    env = cli_environment(data, RAGTUNE_TORCH_THREADS="1")
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "ragtune.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 180, "ragtune serve to answer /health", interval=0.3)
        assert f"ragtune serves http://127.0.0.1:{port}/" in (tmp_path / "serve.log").read_text()
        assert httpx.get(f"{base}/").headers["content-type"].startswith("text/html")
        assert httpx.get(f"{base}/v1/documents").status_code == 401
        auth = {"Authorization": f"Bearer {key['key']}"}
        assert httpx.get(f"{base}/v1/documents", headers=auth).json()["total"] == 0

        assert ragtune(["keys", "revoke", key["id"]], data).returncode == 0
        # Revoking the only key locks the API; it does not switch authentication off.
        wait_until(
            lambda: httpx.get(f"{base}/v1/documents", headers=auth).status_code == 401,
            15,
            "the revoked key to be refused",
        )
        assert httpx.get(f"{base}/v1/documents").status_code == 401
    finally:
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert server.wait(60) in (0, -signal.SIGTERM)
        log.close()
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
