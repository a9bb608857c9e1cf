"""Helpers for the service tests: apps over temporary data, real servers on loopback, polling."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from conftest import THREADS
from ragtune.api.app import create_app
from ragtune.api.deps import Services
from ragtune.config import Settings
from ragtune.ingest.chunking import chunk_document
from ragtune.ingest.loaders import load_bytes

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Polls `condition` until it returns something truthy; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_for_job(client, job_id: str, timeout: float = 120) -> dict:
    def finished() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in ("done", "failed") else None

    return wait_until(finished, timeout, f"job {job_id}", interval=0.1)  # type: ignore[return-value]


def sample_files(*names: str) -> list[tuple[str, tuple[str, bytes]]]:
    chosen = names or tuple(sorted(p.name for p in SAMPLES.iterdir()))
    return [("files", (name, (SAMPLES / name).read_bytes())) for name in chosen]


def service_settings(data_dir: Path, **overrides) -> Settings:
    # Without API keys the rate limit applies per client address, and every test client
    # shares one ("testclient" or 127.0.0.1): a large burst keeps the limiter on without
    # making request-heavy tests depend on timing. Rate-limit tests set their own.
    overrides.setdefault("rate_limit_burst", 1000)
    return Settings(data_dir=data_dir, torch_threads=THREADS, **overrides)


@contextmanager
def app_client(settings: Settings, embedder) -> Iterator[TestClient]:
    """The app in-process (TestClient): fast, and server-side exceptions surface in the test."""
    with TestClient(create_app(settings, embedder=embedder)) as client:
        yield client


@dataclass
class Service:
    """A real server on loopback: `http` talks to it, `app` is what it serves."""

    app: FastAPI
    url: str
    http: httpx.Client

    @property
    def services(self) -> Services:
        return self.app.state.services


@contextmanager
def served(settings: Settings, embedder) -> Iterator[Service]:
    app = create_app(settings, embedder=embedder)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield Service(app, url, http)


@contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """Serves `app` with uvicorn on a free loopback port in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 120, "uvicorn to start")
    if not server.started:
        raise RuntimeError("uvicorn exited during startup; see the log above")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


class MilvusServer:
    """milvus-lite's native server on a loopback port (a real gRPC Milvus endpoint), which a
    test can stop and start again on the same data to simulate an outage."""

    def __init__(self, db_file: Path, port: int | None = None) -> None:
        self.db_file, self.port = db_file, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> MilvusServer:
        from milvus_lite.server import Server

        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        server = Server(str(self.db_file), address=f"127.0.0.1:{self.port}")
        if not (server.init() and server.start()):
            raise RuntimeError(f"milvus-lite server on {self.db_file} did not start")
        self._server = server

        def accepts() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until(accepts, 60, f"milvus-lite to listen on port {self.port}")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def clean_chunk_counts(texts: dict[str, str], documents: list[dict]) -> dict[str, int]:
    """Chunks per document id that a clean run makes of the uploaded `texts` (by file name),
    for `documents` as an upload's 202 lists them."""
    settings = Settings()
    return {
        d["document_id"]: len(
            chunk_document(
                load_bytes(texts[d["filename"]].encode(), d["source"]),
                settings.ingest.chunk_size,
                settings.ingest.chunk_overlap,
            )
        )
        for d in documents
    }


class WorkerProcess:
    """A `ragtune worker` process, its log in a file: which jobs it claimed, whether it started."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.log_path = log_dir / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ragtune.cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("w"),
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def claimed(self) -> list[str]:
        return re.findall(r"claimed job (\w+)", self.log)
