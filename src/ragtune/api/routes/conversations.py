"""Conversations: a follow-up asked with `conversation_id` on POST /v1/query is read against them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from ragtune.api.conversation_schemas import (
    ConversationCreate,
    ConversationDetail,
    ConversationList,
    ConversationOut,
    DeletedConversation,
)
from ragtune.api.deps import OwnerDep, ServicesDep
from ragtune.api.schemas import ErrorResponse

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 404, 409, 422, 429)}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ConversationOut, responses=_ERRORS)
def create_conversation(
    services: ServicesDep, owner: OwnerDep, body: ConversationCreate | None = None
) -> ConversationOut:
    """A new, empty conversation; its title is the first question unless given here."""
    return ConversationOut.of(services.conversations.create((body or ConversationCreate()).title, owner))


@router.get("", response_model=ConversationList, responses=_ERRORS)
def list_conversations(
    services: ServicesDep,
    owner: OwnerDep,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ConversationList:
    """This API key's conversations, the most recently continued first."""
    records, total = services.conversations.recent(owner, offset, limit)
    return ConversationList(conversations=[ConversationOut.of(r) for r in records], total=total)


@router.get("/{conversation_id}", response_model=ConversationDetail, responses=_ERRORS)
def get_conversation(services: ServicesDep, owner: OwnerDep, conversation_id: str) -> ConversationDetail:
    """A conversation with every question and answer, oldest first."""
    record = services.conversations.get(conversation_id, owner)
    return ConversationDetail.of(record, services.conversations.turns(conversation_id, owner))


@router.delete("/{conversation_id}", response_model=DeletedConversation, responses=_ERRORS)
def delete_conversation(services: ServicesDep, owner: OwnerDep, conversation_id: str) -> DeletedConversation:
    services.conversations.delete(conversation_id, owner)
    return DeletedConversation(id=conversation_id)
