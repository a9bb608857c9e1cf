"""Conversations: the questions asked one after another and their answers, kept in the catalog database.

A follow-up is answered against the turns before it (`ragtune.generate.rewrite`), so they
are stored with what rewriting reads: the standalone question that was searched and the
titles and headings of the chunks each answer cited. A conversation belongs to the API key
that started it (``owner``, the key's hash; "" without keys): another key neither sees nor
changes it.

    >>> from ragtune.store.catalog import Catalog
    >>> from ragtune.types import Turn
    >>> conversations = Conversations(Catalog("sqlite://"))
    >>> c = conversations.create()
    >>> conversations.append(c.id, Turn("Who runs Acme?", "Jo [1].", cited_titles=("Acme",)), citations=[])
    >>> [t.question for t in conversations.history(c.id)], conversations.get(c.id).title
    (['Who runs Acme?'], 'Who runs Acme?')
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from ragtune.store.catalog import Catalog
from ragtune.store.tables import TableBase, utc_now
from ragtune.types import Citation, Turn

MAX_TITLE_CHARS = 200
# Rewriting reads only the last few turns; a long conversation is not re-read whole per question.
HISTORY_TURNS = 6


class ConversationNotFoundError(KeyError):
    """No conversation with that id (for this owner)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such conversation"


class ConversationConflictError(RuntimeError):
    """The conversation is not in the state the request assumed (an id taken, a turn to replace gone)."""


class ConversationRow(TableBase):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True, default="")
    title: Mapped[str] = mapped_column(String(MAX_TITLE_CHARS), default="")
    turns: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)


class TurnRow(TableBase):
    __tablename__ = "conversation_turns"

    conversation_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    question: Mapped[str] = mapped_column(Text)
    rewritten_question: Mapped[str | None] = mapped_column(Text, nullable=True)
    answer: Mapped[str] = mapped_column(Text)
    abstained: Mapped[bool] = mapped_column(default=False)
    cited_titles: Mapped[list] = mapped_column(JSON, default=list)
    cited_headings: Mapped[list] = mapped_column(JSON, default=list)
    citations: Mapped[list] = mapped_column(JSON, default=list)  # `Citation` fields, one object each
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    title: str
    turns: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StoredTurn:
    question: str
    rewritten_question: str | None
    answer: str
    abstained: bool
    citations: list[Citation]
    created_at: datetime


def _record(row: ConversationRow) -> ConversationRecord:
    return ConversationRecord(row.id, row.title, row.turns, row.created_at, row.updated_at)


class Conversations:
    """Create, read, extend and delete conversations in the catalog database (SQLite or PostgreSQL)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        tables = [TableBase.metadata.tables[t.__tablename__] for t in (ConversationRow, TurnRow)]
        TableBase.metadata.create_all(catalog.engine, tables=tables)

    def create(self, title: str = "", owner: str = "", conversation_id: str | None = None) -> ConversationRecord:
        """A new conversation; `ConversationConflictError` when `conversation_id` is taken (by anyone)."""
        if len(title) > MAX_TITLE_CHARS:
            raise ValueError(f"a conversation title has at most {MAX_TITLE_CHARS} characters; got {len(title)}")
        row = ConversationRow(id=conversation_id or secrets.token_hex(12), owner=owner, title=title.strip(), turns=0)
        row.created_at = row.updated_at = utc_now()
        try:
            with self.catalog.session() as s, s.begin():
                s.add(row)
        except IntegrityError:
            raise ConversationConflictError(f"the conversation id {row.id!r} is taken; choose another") from None
        return _record(row)

    def get(self, conversation_id: str, owner: str = "") -> ConversationRecord:
        with self.catalog.session() as s:
            return _record(self._row(s, conversation_id, owner))

    def recent(self, owner: str = "", offset: int = 0, limit: int = 50) -> tuple[list[ConversationRecord], int]:
        with self.catalog.session() as s:
            mine = ConversationRow.owner == owner
            rows = s.scalars(
                select(ConversationRow)
                .where(mine)
                .order_by(ConversationRow.updated_at.desc())
                .offset(offset)
                .limit(limit)
            ).all()
            total = s.scalar(select(func.count()).select_from(ConversationRow).where(mine))
            return [_record(r) for r in rows], int(total or 0)

    def turns(self, conversation_id: str, owner: str = "") -> list[StoredTurn]:
        with self.catalog.session() as s:
            self._row(s, conversation_id, owner)
            rows = s.scalars(
                select(TurnRow).where(TurnRow.conversation_id == conversation_id).order_by(TurnRow.seq)
            ).all()
            return [
                StoredTurn(
                    r.question,
                    r.rewritten_question,
                    r.answer,
                    r.abstained,
                    [Citation(**c) for c in r.citations],
                    r.created_at,
                )
                for r in rows
            ]

    def last_seq(self, conversation_id: str, owner: str = "") -> int | None:
        """The position of the conversation's last turn (None while it has none)."""
        with self.catalog.session() as s:
            self._row(s, conversation_id, owner)
            return s.scalar(select(func.max(TurnRow.seq)).where(TurnRow.conversation_id == conversation_id))

    def history(self, conversation_id: str, owner: str = "", drop_last: bool = False) -> list[Turn]:
        """The last `HISTORY_TURNS` turns (oldest first), as rewriting reads them; without the last with `drop_last`."""
        with self.catalog.session() as s:
            self._row(s, conversation_id, owner)
            rows = s.scalars(
                select(TurnRow)
                .where(TurnRow.conversation_id == conversation_id)
                .order_by(TurnRow.seq.desc())
                .limit(HISTORY_TURNS + int(drop_last))
            ).all()
        rows = rows[1:] if drop_last else rows
        return [
            Turn(r.question, r.answer, r.rewritten_question, tuple(r.cited_titles), tuple(r.cited_headings))
            for r in reversed(rows)
        ]

    def append(
        self,
        conversation_id: str,
        turn: Turn,
        citations: Sequence[Citation],
        abstained: bool = False,
        owner: str = "",
        replace_seq: int | None = None,
    ) -> None:
        """Store `turn` as the conversation's next turn, or in place of turn `replace_seq`, which
        must still be its last (`ConversationConflictError` otherwise: a turn came in between)."""
        with self.catalog.session() as s, s.begin():
            # Writing first takes the write lock (SQLite) or the row lock (PostgreSQL), so two
            # turns arriving together are numbered one after the other, not both as N + 1.
            s.execute(
                update(ConversationRow)
                .where(ConversationRow.id == conversation_id, ConversationRow.owner == owner)
                .values(updated_at=utc_now())
            )
            row = self._row(s, conversation_id, owner)
            last = s.scalar(select(func.max(TurnRow.seq)).where(TurnRow.conversation_id == conversation_id))
            seq = 0 if last is None else last + 1
            if replace_seq is not None:
                if replace_seq != last:
                    raise ConversationConflictError(
                        f"turn {replace_seq} of conversation {conversation_id!r} is no longer its last; nothing replaced"
                    )
                s.execute(delete(TurnRow).where(TurnRow.conversation_id == conversation_id, TurnRow.seq == last))
                s.flush()
                seq = last
            s.add(
                TurnRow(
                    conversation_id=conversation_id,
                    seq=seq,
                    question=turn.question,
                    rewritten_question=turn.rewritten_question,
                    answer=turn.answer,
                    abstained=abstained,
                    cited_titles=list(turn.cited_titles),
                    cited_headings=list(turn.cited_headings),
                    citations=[asdict(c) for c in citations],
                    created_at=utc_now(),
                )
            )
            row.turns = seq + 1
            if not row.title:
                row.title = " ".join(turn.question.split())[:80]

    def delete(self, conversation_id: str, owner: str = "") -> None:
        with self.catalog.session() as s, s.begin():
            self._row(s, conversation_id, owner)
            # Explicitly: SQLite enforces ON DELETE CASCADE only with its foreign_keys pragma on.
            s.execute(delete(TurnRow).where(TurnRow.conversation_id == conversation_id))
            s.execute(delete(ConversationRow).where(ConversationRow.id == conversation_id))

    @staticmethod
    def _row(s: Any, conversation_id: str, owner: str) -> ConversationRow:
        row = s.scalar(
            select(ConversationRow).where(ConversationRow.id == conversation_id, ConversationRow.owner == owner)
        )
        if row is None:
            raise ConversationNotFoundError(f"no conversation {conversation_id!r}")
        return row
