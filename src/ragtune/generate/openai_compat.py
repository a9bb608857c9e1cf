"""A generator that asks any OpenAI-compatible ``/v1/chat/completions`` server: vLLM,
Ollama, llama.cpp's server, TGI, hosted APIs, or `ragtune serve-llm`.

Retries with exponential backoff on 429, 5xx and connection failures (honouring
``Retry-After``); streams over server-sent events; returns the server's token usage.
Failures raise `LLMServerError` with a message that says what to change.

An answer may be written by another served model than the default, chosen by name: vLLM
serves each LoRA adapter of ``--lora-modules`` as a model of its own, so ``models`` (the
names a caller may choose, RAGTUNE_LLM_MODELS) routes a question to an adapter.

    from ragtune.generate.openai_compat import OpenAICompatGenerator

    generator = OpenAICompatGenerator("http://127.0.0.1:8001/v1", model="SmolLM2-135M-Instruct.Q4_1")
    generation = generator.generate("Who created Milvus?", hits)
    generation.text, generation.usage  # ('Zilliz [1].', {'prompt_tokens': 212, ...})
    generator = OpenAICompatGenerator("http://vllm:8001/v1", model="smollm2", models=["rag"])
    generator.generate("Who created Milvus?", hits, model="rag")  # written by the adapter "rag"
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator as PyGenerator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx

from ragtune.config import LLMSettings
from ragtune.generate.base import NOT_FOUND, Generation, is_refusal, run_to_end
from ragtune.generate.prompts import render_prompt
from ragtune.types import Hit

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_MAX_RETRY_AFTER = 30.0


class LLMServerError(RuntimeError):
    """The LLM server could not produce an answer; the message says why and what to do."""


class OpenAICompatGenerator:
    """Writes answers with a model behind an OpenAI-compatible chat completions API."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str = "",
        api_key: str = "",
        timeout_seconds: float = 120.0,
        max_retries: int = 3,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        context_tokens: int = 2048,
        backoff_seconds: float = 0.5,
        models: Sequence[str] = (),
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8001/v1; got {base_url!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0; got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        # An empty default (the server's first model) has no name to be chosen by until asked.
        self.model_names = tuple(dict.fromkeys(name for name in (model, *models) if name))
        self.max_retries = max_retries
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.context_tokens = context_tokens
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Connecting should be quick even when generating is slow.
        timeout = httpx.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds))
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: LLMSettings) -> OpenAICompatGenerator:
        return cls(
            settings.base_url,
            settings.model,
            settings.api_key,
            settings.timeout_seconds,
            settings.max_retries,
            settings.max_new_tokens,
            settings.temperature,
            settings.context_tokens,
            models=settings.models,
        )

    def close(self) -> None:
        self._client.close()

    # --- HTTP ------------------------------------------------------------------------
    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("retry-after", "")
            try:
                return min(float(retry_after), _MAX_RETRY_AFTER)
            except ValueError:
                pass
        return self.backoff_seconds * 2**attempt

    @contextmanager
    def _send(
        self, method: str, path: str, body: dict[str, Any] | None = None, stream: bool = False
    ) -> Iterator[httpx.Response]:
        """One request with retries; yields a response whose status is 2xx (body unread if streaming)."""
        last_error, delay = "", 0.0
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(delay)
            try:
                request = self._client.build_request(method, path, json=body)
                response = self._client.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                delay = self._delay(attempt, None)
                continue
            except httpx.ReadTimeout:
                raise LLMServerError(
                    f"the LLM server at {self.base_url} sent nothing for {self.timeout_seconds:g} s; "
                    "raise RAGTUNE_LLM_TIMEOUT_SECONDS or use a faster model"
                ) from None
            try:
                if response.status_code in _RETRY_STATUS:
                    response.read()
                    last_error = f"HTTP {response.status_code}: {_error_message(response)}"
                    delay = self._delay(attempt, response)
                    continue
                if response.status_code >= 400:
                    response.read()
                    raise self._status_error(response, body)
                yield response
                return
            finally:
                response.close()
        raise LLMServerError(
            f"the LLM server at {self.base_url} failed {self.max_retries + 1} time(s), last: {last_error}; "
            "check that it is running (e.g. `ragtune serve-llm`) and RAGTUNE_LLM_BASE_URL points to it"
        )

    def _status_error(self, response: httpx.Response, body: dict[str, Any] | None) -> LLMServerError:
        message = _error_message(response)
        if response.status_code in (401, 403):
            return LLMServerError(
                f"the LLM server at {self.base_url} refused the request (HTTP {response.status_code}: {message}); "
                "set RAGTUNE_LLM_API_KEY to a key it accepts"
            )
        model = (body or {}).get("model")
        if model and (response.status_code == 404 or "model" in message.lower()):
            served = ", ".join(self.models()) or "none listed"
            return LLMServerError(
                f"the LLM server at {self.base_url} does not serve model {model!r} ({message}); "
                f"it serves: {served}. Set RAGTUNE_LLM_MODEL (and RAGTUNE_LLM_MODELS) to names it serves"
            )
        return LLMServerError(f"the LLM server at {self.base_url} answered HTTP {response.status_code}: {message}")

    def models(self) -> list[str]:
        """The model ids the server lists at /models ([] when it lists none or cannot)."""
        try:
            response = self._client.get("/models")
            return [m["id"] for m in response.json().get("data", [])] if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return []

    def _model(self) -> str:
        if not self.model:
            with self._send("GET", "/models") as response:
                listed = [m.get("id") for m in response.json().get("data", [])]
            if not listed:
                raise LLMServerError(f"the LLM server at {self.base_url} lists no models; set RAGTUNE_LLM_MODEL")
            self.model = listed[0]  # the server's only/first model, asked once
        return self.model

    # --- chat ------------------------------------------------------------------------
    def chat(
        self,
        messages: list[dict[str, str]],
        stream: bool,
        max_tokens: int | None = None,
        temperature: float | None = None,
        model: str | None = None,
    ) -> PyGenerator[str, None, tuple[str, dict[str, int]]]:
        """Yield text deltas of the reply to `messages` by `model` (None: the default); return (text, usage)."""
        body: dict[str, Any] = {
            "model": model or self._model(),
            "messages": messages,
            "max_tokens": max_tokens or self.max_new_tokens,
            "temperature": self.temperature if temperature is None else temperature,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        with self._send("POST", "/chat/completions", body, stream=stream) as response:
            if not stream:
                payload = response.json()
                text = _content(payload["choices"][0].get("message", {}))
                yield text
                return text, _usage(payload)
            parts: list[str] = []
            usage: dict[str, int] = {}
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # comments (": ping") and blank event separators
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise LLMServerError(f"the LLM server at {self.base_url} failed mid-answer: {chunk['error']}")
                usage = _usage(chunk) or usage
                for choice in chunk.get("choices") or []:
                    delta = _content(choice.get("delta", {}))
                    if delta:
                        parts.append(delta)
                        yield delta
            return "".join(parts), usage

    def _answer(
        self, question: str, hits: list[Hit], stream: bool, model: str | None
    ) -> PyGenerator[str, None, Generation]:
        prompt = render_prompt(question, hits, None, self.context_tokens, self.max_new_tokens)
        text, usage = yield from self.chat(prompt.messages, stream, model=model)
        if is_refusal(text):
            return Generation(NOT_FOUND, abstained=True, usage=usage)
        return Generation(text.strip(), usage=usage)

    def stream(self, question: str, hits: list[Hit], model: str | None = None) -> PyGenerator[str, None, Generation]:
        return (yield from self._answer(question, hits, True, model))

    def complete(self, messages: list[dict[str, str]], max_new_tokens: int) -> str:
        text, _usage = run_to_end(self.chat(messages, stream=False, max_tokens=max_new_tokens, temperature=0.0))
        return text

    def generate(self, question: str, hits: list[Hit], model: str | None = None) -> Generation:
        return run_to_end(self._answer(question, hits, False, model))


def _content(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # some servers send content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _usage(payload: dict[str, Any]) -> dict[str, int]:
    usage = payload.get("usage") or {}
    return {
        k: int(v)
        for k, v in usage.items()
        if k in ("prompt_tokens", "completion_tokens", "total_tokens") and v is not None
    }


def _error_message(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:300].strip() or response.reason_phrase
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if error:
        return str(error)
    return str(payload.get("detail") or payload)[:300] if isinstance(payload, dict) else str(payload)[:300]
