"""The OpenAI Chat Completions models of POST /v1/chat/completions and GET /v1/models.

They accept and ignore the fields of OpenAI's API (``temperature``, ``seed``, …) that an
extractive answerer has no use for, and must not fail on them (see `ragtune.api.schemas`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ragtune.api.schemas import CitationOut


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The text of the message; content parts other than text (images) are skipped."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(
        examples=["ragtune"],
        description="One of GET /v1/models: 'ragtune' (the default model) or a name of RAGTUNE_LLM_MODELS "
        "(e.g. a LoRA adapter vLLM serves), which then writes the answer.",
    )
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    n: int = Field(1, ge=1, le=1, description="One choice only.")
    collection: str | None = Field(
        None, max_length=255, description="ragtune extension: search this collection only; default: all yours."
    )

    @field_validator("messages")
    @classmethod
    def _has_user_message(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" and m.text().strip() for m in messages):
            raise ValueError("needs at least one non-empty message with role 'user' (the question)")
        return messages

    def question(self) -> str:
        """The last user message: the question answered from the documents."""
        return next(m.text() for m in reversed(self.messages) if m.role == "user" and m.text().strip())

    def exchanges(self) -> list[tuple[str, str]]:
        """The (question, answer) pairs before the last user message, oldest first: its conversation."""
        last = max(i for i, m in enumerate(self.messages) if m.role == "user" and m.text().strip())
        pairs: list[tuple[str, str]] = []
        for message in self.messages[:last]:
            text = message.text().strip()
            if message.role == "user" and text:
                pairs.append((text, ""))
            elif message.role == "assistant" and pairs and not pairs[-1][1]:
                pairs[-1] = (pairs[-1][0], text)
        return pairs


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: Literal["stop", "length"] = "stop"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    citations: list[CitationOut] = Field(description="ragtune extension: the sources behind the [n] markers.")
    rewritten_question: str | None = Field(
        None, description="ragtune extension: the standalone question searched, when the last message was a follow-up."
    )


class ChatCompletionDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionChunkChoice(BaseModel):
    index: int = 0
    delta: ChatCompletionDelta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    citations: list[CitationOut] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragtune"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
