"""`ragtune ask` (one question, optionally a follow-up in a stored conversation) and `ragtune chat` (interactive)."""

from __future__ import annotations

import re
import sys
from dataclasses import asdict
from typing import Annotated, Any

import typer

from ragtune.cli.common import (
    COLLECTION_HELP,
    MODES_HELP,
    WHERE_HELP,
    UsageError,
    app,
    check_mode,
    load_settings,
    open_system,
    print_json,
    search_filters,
)

_CONVERSATION_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_QUIT = {"/quit", "/exit", "/q"}


def _check_conversation_id(conversation: str | None) -> None:
    if conversation is not None and not _CONVERSATION_ID.match(conversation):
        raise UsageError(
            f"--conversation must be 1 to 64 letters, digits, '.', '_' or '-' (e.g. team-notes); got {conversation!r}"
        )


def _stored_history(conversations: Any, conversation: str | None) -> list[Any]:  # -> list[Turn]
    """The stored turns of `conversation`; none for a new one (created once it has an answer)."""
    from ragtune.store.conversations import ConversationNotFoundError

    if conversation is None:
        return []
    try:
        return conversations.history(conversation)
    except ConversationNotFoundError:
        return []


def _store(conversations: Any, conversation: str, answer: Any) -> None:
    """`answer` as the next turn of `conversation`, which is created on its first answer."""
    from ragtune.store.conversations import ConversationConflictError, ConversationNotFoundError

    try:
        conversations.append(conversation, answer.turn(), answer.citations, answer.abstained)
    except ConversationNotFoundError:
        try:
            conversations.create(conversation_id=conversation)
        except ConversationConflictError as exc:  # an API key's conversation holds the id
            raise UsageError(f"--conversation {conversation}: {exc}") from None
        conversations.append(conversation, answer.turn(), answer.citations, answer.abstained)


def _echo_answer(answer: Any) -> None:  # answer: ragtune.types.Answer
    if answer.rewritten_question:
        typer.echo(f"(searched: {answer.rewritten_question})", err=True)
    typer.echo(answer.text)
    if answer.citations:
        typer.echo("\nSources:")
        for c in answer.citations:
            where = f", page {c.page}" if c.page else ""
            heading = f" — {c.heading}" if c.heading else ""
            typer.echo(f"  [{c.number}] {c.source}{where}{heading}")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, max=100)] = None,
    mode: Annotated[str | None, typer.Option(help=MODES_HELP)] = None,
    source: Annotated[list[str] | None, typer.Option(help="Only these sources (repeatable).")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Only documents with any of these tags.")] = None,
    collection: Annotated[list[str] | None, typer.Option(help=COLLECTION_HELP)] = None,
    where: Annotated[list[str] | None, typer.Option(help=WHERE_HELP)] = None,
    conversation: Annotated[
        str | None,
        typer.Option(help="Ask as a follow-up in this stored conversation (created on first use) and add to it."),
    ] = None,
    min_relevance: Annotated[
        float | None, typer.Option(min=-1.0, max=1.0, help="Drop chunks less similar to the question than this.")
    ] = None,
    multi_query: Annotated[
        bool, typer.Option("--multi-query", help="Also search the LLM's paraphrases (needs an LLM backend).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Answer, citations and timings as JSON.")] = False,
) -> None:
    """Answer a question from the indexed documents, with numbered citations."""
    from ragtune.pipeline import MultiQueryUnavailableError
    from ragtune.types import QuestionError, check_question

    settings = load_settings()
    try:
        check_question(question, settings.answer.max_question_chars)
    except QuestionError as exc:
        raise UsageError(str(exc)) from None
    check_mode(mode)
    _check_conversation_id(conversation)
    filters = search_filters(source, tag, collection, where)
    from ragtune.store.conversations import Conversations

    with open_system(settings, generator=True) as system:
        assert system.rag is not None  # built with its generator
        conversations = Conversations(system.catalog)
        try:
            answer = system.rag.ask(
                question,
                top_k,
                mode,
                filters,
                history=_stored_history(conversations, conversation),
                min_relevance=min_relevance,
                multi_query=multi_query,
            )
        except (MultiQueryUnavailableError, QuestionError) as exc:
            raise UsageError(str(exc)) from None
        if conversation is not None:
            _store(conversations, conversation, answer)
    if as_json:
        print_json(
            {
                "question": answer.question,
                "rewritten_question": answer.rewritten_question,
                "answer": answer.text,
                "abstained": answer.abstained,
                "citations": [asdict(c) for c in answer.citations],
                "retrieved": [
                    {"chunk_id": h.id, "collection": h.collection, "source": h.source, "page": h.page, "score": h.score}
                    for h in answer.hits
                ],
                "timings_ms": answer.timings_ms,
                "conversation_id": conversation,
                "debug": answer.debug,
            }
        )
        return
    _echo_answer(answer)


@app.command()
def chat(
    conversation: Annotated[
        str | None, typer.Option(help="Continue (or start) this stored conversation; default: kept in memory only.")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, max=100)] = None,
    mode: Annotated[str | None, typer.Option(help=MODES_HELP)] = None,
    source: Annotated[list[str] | None, typer.Option(help="Only these sources (repeatable).")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Only documents with any of these tags.")] = None,
    collection: Annotated[list[str] | None, typer.Option(help=COLLECTION_HELP)] = None,
    where: Annotated[list[str] | None, typer.Option(help=WHERE_HELP)] = None,
) -> None:
    """Ask questions one after another; follow-ups ("When was it founded?") are read with the ones before.

    One question per line; /new starts a new conversation, /quit (or Ctrl+D) ends."""
    from ragtune.store.conversations import Conversations
    from ragtune.types import QuestionError, Turn

    check_mode(mode)
    _check_conversation_id(conversation)
    filters = search_filters(source, tag, collection, where)
    interactive = sys.stdin.isatty()
    with open_system(load_settings(), generator=True) as system:
        assert system.rag is not None
        conversations = Conversations(system.catalog)
        history: list[Turn] = _stored_history(conversations, conversation)
        if interactive:
            typer.echo("Ask about your documents; /new starts over, /quit ends.", err=True)
        while True:
            if interactive:
                typer.echo("> ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line or line.strip() in _QUIT:
                break
            question = line.strip()
            if not question:
                continue
            if question == "/new":
                if conversation is not None:
                    typer.echo(f"(new conversation, kept in memory only; {conversation!r} is left as it was)", err=True)
                else:
                    typer.echo("(new conversation)", err=True)
                history, conversation = [], None
                continue
            try:
                answer = system.rag.ask(question, top_k, mode, filters, history=history)
            except QuestionError as exc:
                typer.echo(f"error: {exc}", err=True)
                continue
            _echo_answer(answer)
            typer.echo("")
            history = [*history, answer.turn()]
            if conversation is not None:
                _store(conversations, conversation, answer)
