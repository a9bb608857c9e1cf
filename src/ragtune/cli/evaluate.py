"""`ragtune eval`: retrieval, answers and conversations measured on a BEIR-format dataset, and two results compared."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ragtune.cli.common import MODES_HELP, UsageError, check_mode, eval_app, load_settings, print_json

INDEX_HELP = (
    "Search the configured index itself (read-only; for a set `ragtune synth` made from it) instead of "
    "a scratch copy of the dataset's corpus."
)


def _dataset_dir(path: Path) -> Path:
    if not path.is_dir():
        raise UsageError(
            f"{path} is not a directory; expected a BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/)"
        )
    return path


@contextmanager
def _usage_errors() -> Iterator[None]:
    """An index that is missing or empty, or a faithfulness model that does not load, is bad input (exit 2)."""
    from ragtune.eval.faithfulness import FaithfulnessModelError
    from ragtune.eval.index import EmptyIndexError

    try:
        yield
    except (EmptyIndexError, FaithfulnessModelError) as exc:
        raise UsageError(str(exc)) from None


@eval_app.command("retrieval")
def eval_retrieval(
    dataset_dir: Annotated[Path, typer.Argument(help="BEIR dataset folder.")],
    mode: Annotated[str, typer.Option(help=MODES_HELP)] = "hybrid",
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate a fixed-seed sample of N queries.")] = None,
    index: Annotated[bool, typer.Option("--index", help=INDEX_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recall@1/5/10, MRR@10 and nDCG@10 against a plain bm25s baseline."""
    from ragtune.eval.runner import evaluate_retrieval

    check_mode(mode)
    with _usage_errors():
        report = evaluate_retrieval(_dataset_dir(dataset_dir), load_settings(), mode, limit, index=index)  # type: ignore[arg-type]
    if as_json:
        print_json(report)
        return
    baseline = report["baseline_bm25s"]
    for metric in ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"):
        typer.echo(f"{metric:10} {report[metric]:.4f}   (bm25s {baseline[metric]:.4f})")
    typer.echo(f"{report['n_queries']} queries, mode {mode}")


@eval_app.command("answers")
def eval_answers(
    dataset_dir: Annotated[Path, typer.Argument(help="BEIR dataset folder whose queries carry 'answers'.")],
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate a fixed-seed sample of N questions.")] = None,
    mode: Annotated[str | None, typer.Option(help=MODES_HELP)] = None,
    index: Annotated[bool, typer.Option("--index", help=INDEX_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """SQuAD exact match and F1, citation support, faithfulness to the cited chunks, abstention when unanswerable."""
    from ragtune.eval.runner import evaluate_answers

    check_mode(mode)
    with _usage_errors():
        report = evaluate_answers(_dataset_dir(dataset_dir), load_settings(), limit, mode=mode, index=index)  # type: ignore[arg-type]
    if as_json:
        print_json(report)
        return
    for key, value in report.items():
        typer.echo(f"{key:18} {value}")


@eval_app.command("conversations")
def eval_conversations(
    dataset_dir: Annotated[
        Path, typer.Argument(help="BEIR dataset folder (with conversations.jsonl, or built by rule).")
    ],
    mode: Annotated[str | None, typer.Option(help=MODES_HELP)] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate a fixed-seed sample of N items.")] = None,
    write: Annotated[Path | None, typer.Option(help="Also write the items evaluated to this JSONL file.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """R@5 of follow-up questions searched verbatim, condensed after the first question, and standalone."""
    from ragtune.eval.conversations import evaluate_conversations

    check_mode(mode)
    report = evaluate_conversations(_dataset_dir(dataset_dir), load_settings(), mode, limit, write=write)  # type: ignore[arg-type]
    if as_json:
        print_json(report)
        return
    for way in ("verbatim", "condensed", "standalone"):
        typer.echo(f"{way:11} R@5 {report[way + '_r@5']:.4f}   article hit@5 {report[way + '_hit@5']:.4f}")
    typer.echo(f"{report['n_items']} follow-ups, condenser {report['condenser']}, {report['rewritten']:.0%} rewritten")


@eval_app.command("compare")
def eval_compare(
    first: Annotated[Path, typer.Argument(help="A result of ragtune eval … --json (A).")],
    second: Annotated[Path, typer.Argument(help="Another result of the same kind (B).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Two results side by side: every metric and setting of A and B, and B − A."""
    from dataclasses import asdict

    from ragtune.eval.compare import ResultError, compare_files, format_table

    try:
        rows = compare_files(first, second)
    except ResultError as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        print_json([asdict(row) for row in rows])
        return
    typer.echo(format_table(rows, str(first), str(second)))
