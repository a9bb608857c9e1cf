"""A stub OpenAI-compatible chat server on loopback that records what it was sent.

It answers by the request's system prompt: the condensing prompt gets `condensed`, the
paraphrasing prompt gets `paraphrases` (one per line), and anything else (the answering
prompt) gets `answer`. Streaming requests get the same text as one SSE delta. It serves the
models `served` (GET /models lists them, first the base model, as vLLM lists its LoRA
adapters after it) and answers a request for any other with vLLM's 404."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ragtune.generate.rewrite import CONDENSE_PROMPT, PARAPHRASE_PROMPT


@dataclass
class StubLLM:
    url: str = ""
    condensed: str = "When was Acme Corp founded?"
    paraphrases: str = "1. first rephrasing\n2. second rephrasing"
    answer: str = "It says so [1]."
    served: tuple[str, ...] = ("stub-model",)
    requests: list[dict] = field(default_factory=list)

    @staticmethod
    def kind(body: dict) -> str:
        """What a request is for, by its system prompt: condense, paraphrase or answer."""
        system = next((m["content"] for m in body.get("messages", []) if m["role"] == "system"), "")
        if system == CONDENSE_PROMPT:
            return "condense"
        if system.startswith(PARAPHRASE_PROMPT.split("{n}")[0]):
            return "paraphrase"
        return "answer"

    def reply(self, body: dict) -> str:
        return {"condense": self.condensed, "paraphrase": self.paraphrases, "answer": self.answer}[self.kind(body)]

    def kinds(self) -> list[str]:
        """What each request was for, in order."""
        return [self.kind(body) for body in self.requests]

    def models(self, kind: str | None = None) -> list[str]:
        """The `model` each request (of `kind`, if given) named, in order."""
        return [body.get("model", "") for body in self.requests if kind is None or self.kind(body) == kind]


@contextmanager
def stub_llm(served: tuple[str, ...] = ("stub-model",), **replies: str) -> Iterator[StubLLM]:
    stub = StubLLM(served=served, **replies)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._json({"object": "list", "data": [{"id": name, "object": "model"} for name in stub.served]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stub.requests.append(body)
            if body.get("model") not in stub.served:
                message = f"The model `{body.get('model')}` does not exist."
                self._json({"error": {"message": message, "type": "NotFoundError", "code": 404}}, 404)
                return
            text = stub.reply(body)
            if not body.get("stream"):
                self._json({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}], "usage": {}})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunk = {"choices": [{"index": 0, "delta": {"content": text}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())

        def _json(self, payload: dict, status: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
