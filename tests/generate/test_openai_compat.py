"""The HTTP backend against a real `ragtune serve-llm` process on loopback (no mocks)."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from ragtune.generate.local import LocalLM, SamplingParams
from ragtune.generate.openai_compat import LLMServerError, OpenAICompatGenerator
from ragtune.generate.prompts import render_prompt
from ragtune.types import Hit

MODEL = "tiny-llama"
HITS = [Hit("c1", "d1", "milvus was created by zilliz .", "/m.md", "milvus", 0, "", (), 1.0)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_llama_dir: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "RAGTUNE_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from ragtune.cli import main; main()",
            "serve-llm",
            "--model",
            str(tiny_llama_dir),
            "--served-model-name",
            MODEL,
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve-llm exited with {process.returncode}: {process.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("serve-llm did not answer /health within 90 s")
            time.sleep(0.3)
        yield f"{url}/v1"
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def local(tiny_llama_dir: Path) -> LocalLM:
    return LocalLM.load(tiny_llama_dir, device="cpu")


def test_models_lists_the_served_name(server):
    generator = OpenAICompatGenerator(server)
    assert generator.models() == [MODEL]


def test_answers_match_the_local_model_and_report_usage(server, local):
    generator = OpenAICompatGenerator(server, max_new_tokens=10, context_tokens=1024)  # model: the server's first
    generation = generator.generate("who created milvus ?", HITS)
    assert generator.model == MODEL
    # The server decodes greedily what the local backend would for the same messages.
    messages = render_prompt("who created milvus ?", HITS, None, 1024, 10).messages
    expected = local.complete(local.chat_prompt(messages), SamplingParams(max_new_tokens=10))
    assert generation.usage == expected.usage
    assert generation.abstained or generation.text == expected.text.strip()


def test_streaming_yields_the_same_answer_and_usage(server):
    generator = OpenAICompatGenerator(server, MODEL, max_new_tokens=12, context_tokens=1024)
    stream = generator.stream("who created milvus ?", HITS)
    deltas = []
    while True:
        try:
            deltas.append(next(stream))
        except StopIteration as done:
            streamed = done.value
            break
    plain = generator.generate("who created milvus ?", HITS)
    assert len(deltas) > 1
    assert streamed == plain and streamed.usage["completion_tokens"] > 0
    if not streamed.abstained:
        assert "".join(deltas).strip() == streamed.text


def test_openai_sse_wire_format(server):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    with httpx.stream("POST", f"{server}/chat/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 4 and chunks[-1]["choices"] == []


def test_a_client_that_leaves_a_stream_early_does_not_hold_the_model(server):
    # The decoding generator of an abandoned stream used to stay suspended holding the
    # model's lock: every request after it waited forever.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64, "stream": True}
    for _ in range(2):
        with httpx.stream("POST", f"{server}/chat/completions", json=body, timeout=30) as response:
            next(line for line in response.iter_lines() if line.startswith("data: "))
    body |= {"stream": False, "max_tokens": 4, "temperature": 0}
    response = httpx.post(f"{server}/chat/completions", json=body, timeout=30)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4


def test_unknown_model_names_the_served_ones(server):
    generator = OpenAICompatGenerator(server, "gpt-9", max_retries=0)
    with pytest.raises(LLMServerError, match=r"does not serve model 'gpt-9'.*it serves: tiny-llama.*RAGTUNE_LLM_MODEL"):
        generator.generate("who created milvus ?", HITS)


def test_invalid_request_is_a_400_in_openai_shape(server):
    response = httpx.post(f"{server}/chat/completions", json={"model": MODEL, "messages": []}, timeout=10)
    assert response.status_code == 400 and "messages" in response.json()["error"]["message"]


def test_server_down_is_a_clear_error_after_retries():
    generator = OpenAICompatGenerator(f"http://127.0.0.1:{_free_port()}/v1", "m", max_retries=2, backoff_seconds=0.01)
    started = time.monotonic()
    with pytest.raises(LLMServerError, match=r"failed 3 time\(s\).*ConnectError.*ragtune serve-llm"):
        generator.generate("q", HITS)
    assert time.monotonic() - started < 5


class _Flaky(BaseHTTPRequestHandler):
    """Answers 429 (with Retry-After), then 503, then a completion."""

    calls: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        _Flaky.calls.append(self.headers.get("authorization", ""))
        if len(_Flaky.calls) == 1:
            self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.05"})
        elif len(_Flaky.calls) == 2:
            self._send(503, {"error": {"message": "loading"}})
        else:
            self._send(
                200,
                {
                    "choices": [{"message": {"role": "assistant", "content": "Zilliz [1]."}}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 4, "total_tokens": 54},
                },
            )

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for key, value in {
            "content-type": "application/json",
            "content-length": str(len(data)),
            **(headers or {}),
        }.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


def test_retries_429_and_5xx_with_backoff_then_succeeds():
    _Flaky.calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        generator = OpenAICompatGenerator(
            f"http://127.0.0.1:{httpd.server_port}/v1", "m", api_key="sk-test", max_retries=2, backoff_seconds=0.01
        )
        generation = generator.generate("who created milvus ?", HITS)
        assert generation.text == "Zilliz [1]." and generation.usage["total_tokens"] == 54
        assert _Flaky.calls == ["Bearer sk-test"] * 3
        _Flaky.calls = []
        with pytest.raises(LLMServerError, match=r"failed 2 time\(s\), last: HTTP 503: loading"):
            OpenAICompatGenerator(generator.base_url, "m", max_retries=1, backoff_seconds=0.01).generate("q", HITS)
    finally:
        httpd.shutdown()


def test_bad_base_url_is_named():
    with pytest.raises(ValueError, match="base_url must be an http"):
        OpenAICompatGenerator("localhost:8001")


def test_serve_llm_with_a_missing_model_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from ragtune.cli import main; main()", "serve-llm", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "not found: give an HF model directory or a .gguf file" in result.stderr
