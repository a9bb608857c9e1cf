"""Conversations in the catalog database: turns in order, the last replaced, history bounded, per owner."""

from __future__ import annotations

import threading

import pytest

from ragtune.store.catalog import Catalog
from ragtune.store.conversations import (
    HISTORY_TURNS,
    ConversationConflictError,
    ConversationNotFoundError,
    Conversations,
)
from ragtune.types import Citation, Turn


def exercise(conversations: Conversations) -> None:
    """The same checks on SQLite and PostgreSQL."""
    threaded_appends(conversations)
    ordered_turns(conversations)


def threaded_appends(conversations: Conversations) -> None:
    """Turns arriving together (two tabs, a double submit) are all stored, numbered in turn."""
    c = conversations.create()

    def add(n: int) -> None:
        for k in range(8):
            conversations.append(c.id, Turn(f"q{n}.{k}", "a"), [])

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    turns = conversations.turns(c.id)
    assert len(turns) == 32 and conversations.get(c.id).turns == 32
    assert sorted(t.question for t in turns) == sorted(f"q{n}.{k}" for n in range(4) for k in range(8))
    conversations.delete(c.id)


def ordered_turns(conversations: Conversations) -> None:
    c = conversations.create(owner="alice")
    for n in range(HISTORY_TURNS + 2):
        turn = Turn(f"question {n}", f"answer {n} [1]", f"standalone {n}", (f"Title {n}",), (f"Heading {n}",))
        citation = Citation(1, f"d{n}-00000", f"d{n}", f"s{n}", f"Title {n}", 0, "", "text", 0.5)
        conversations.append(c.id, turn, [citation], abstained=n == 0, owner="alice")
    assert conversations.get(c.id, "alice").turns == HISTORY_TURNS + 2
    history = conversations.history(c.id, "alice")
    assert [t.question for t in history] == [f"question {n}" for n in range(2, HISTORY_TURNS + 2)]
    assert history[-1].cited_titles == (f"Title {HISTORY_TURNS + 1}",) and history[-1].searched.startswith("standalone")
    assert conversations.history(c.id, "alice", drop_last=True)[-1].question == f"question {HISTORY_TURNS}"

    last = conversations.last_seq(c.id, "alice")
    assert last == HISTORY_TURNS + 1
    conversations.append(c.id, Turn("again", "new answer"), [], owner="alice", replace_seq=last)
    turns = conversations.turns(c.id, "alice")
    assert len(turns) == HISTORY_TURNS + 2 and turns[-1].question == "again" and turns[0].abstained
    assert turns[0].citations == [Citation(1, "d0-00000", "d0", "s0", "Title 0", 0, "", "text", 0.5)]
    # Replacing a turn that is no longer the last (another one came in between) replaces nothing.
    with pytest.raises(ConversationConflictError, match="no longer its last"):
        conversations.append(c.id, Turn("late", "x"), [], owner="alice", replace_seq=last - 1)
    with pytest.raises(ConversationConflictError, match="is taken"):
        conversations.create(conversation_id=c.id, owner="bob")
    assert conversations.get(c.id, "alice").title == "question 0"

    other = conversations.create(title="Bob's", owner="bob")
    assert [r.id for r in conversations.recent("alice")[0]] == [c.id]
    assert conversations.recent("bob") == ([conversations.get(other.id, "bob")], 1)
    for call in (
        lambda: conversations.get(c.id, "bob"),
        lambda: conversations.append(c.id, Turn("q", "a"), [], owner="bob"),
        lambda: conversations.delete(c.id, "bob"),
    ):
        with pytest.raises(ConversationNotFoundError):
            call()
    conversations.delete(c.id, "alice")
    with pytest.raises(ConversationNotFoundError, match="no conversation"):
        conversations.turns(c.id, "alice")
    assert conversations.recent("alice") == ([], 0)


def test_conversations_on_sqlite(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    exercise(Conversations(catalog))
    # Deleting a conversation deletes its turns (SQLite does not cascade by itself).
    with catalog.engine.connect() as connection:
        from sqlalchemy import text

        assert connection.execute(text("SELECT count(*) FROM conversation_turns")).scalar() == 0
    catalog.close()


def test_a_title_over_the_limit_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at most 200"):
        Conversations(Catalog("sqlite://")).create(title="x" * 201)
