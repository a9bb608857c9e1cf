"""The request and response models of the conversation routes (see `ragtune.api.schemas` for the rest)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from ragtune.api.schemas import CitationOut, StrictModel, as_utc
from ragtune.store.conversations import ConversationRecord, StoredTurn


class ConversationCreate(StrictModel):
    title: str = Field("", max_length=200, description="Default: the first question.")


class ConversationOut(BaseModel):
    id: str
    title: str
    turns: int = Field(description="Questions answered so far.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: ConversationRecord) -> ConversationOut:
        return cls(
            id=record.id,
            title=record.title,
            turns=record.turns,
            created_at=as_utc(record.created_at),
            updated_at=as_utc(record.updated_at),
        )


class ConversationList(BaseModel):
    conversations: list[ConversationOut]
    total: int


class TurnOut(BaseModel):
    question: str
    rewritten_question: str | None
    answer: str
    abstained: bool
    citations: list[CitationOut]
    created_at: datetime

    @classmethod
    def of(cls, turn: StoredTurn) -> TurnOut:
        return cls(
            question=turn.question,
            rewritten_question=turn.rewritten_question,
            answer=turn.answer,
            abstained=turn.abstained,
            citations=[CitationOut.of(c) for c in turn.citations],
            created_at=as_utc(turn.created_at),
        )


class ConversationDetail(BaseModel):
    id: str
    title: str
    created_at: datetime
    updated_at: datetime
    turns: list[TurnOut] = Field(description="The questions and answers, oldest first.")

    @classmethod
    def of(cls, record: ConversationRecord, turns: list[StoredTurn]) -> ConversationDetail:
        return cls(
            id=record.id,
            title=record.title,
            created_at=as_utc(record.created_at),
            updated_at=as_utc(record.updated_at),
            turns=[TurnOut.of(t) for t in turns],
        )


class DeletedConversation(BaseModel):
    id: str
    deleted: Literal[True] = True
