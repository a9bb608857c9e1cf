"""`ragtune synth`: a synthetic question set about the indexed documents, for `ragtune eval` and `ragtune finetune`."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ragtune.cli.common import UsageError, app, load_settings, print_json

if TYPE_CHECKING:
    from ragtune.system import System


def _summary(manifest: dict[str, Any], out: Path) -> str:
    counts, top_k = manifest["counts"], manifest["round_trip_top_k"]
    lines = [
        f"{counts['generated']} questions written by {manifest['writer']} about {counts['chunks']} chunks of "
        f"{counts['documents']} documents; kept {counts['kept']}: dropped {counts['dropped_bad_answer']} whose "
        f"answer is not in their chunk or is in the question, {counts['dropped_duplicate']} duplicates and "
        f"{counts['dropped_round_trip']} that do not retrieve their chunk in the top {top_k}; "
        f"{counts['unanswerable']} made unanswerable"
    ]
    for name, split in manifest["splits"].items():
        lines.append(
            f"{name}: {split['documents']} documents, {split['queries']} questions ({split['with_answers']} with "
            f"answers), {split['unanswerable']} unanswerable, {split['finetune_rows']} finetune rows -> {out / name}"
        )
    return "\n".join(lines)


@app.command()
def synth(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the set (absent or empty): train/, holdout/, manifest.json.")
    ],
    corpus: Annotated[
        Path | None,
        typer.Option(
            help="Index this folder's files into a scratch store and use them instead of the configured index."
        ),
    ] = None,
    per_chunk: Annotated[int, typer.Option(help="Questions written per chunk (1 to 20).")] = 2,
    unanswerable: Annotated[
        float, typer.Option(help="Share of each split's answerable questions asked of every other document instead.")
    ] = 0.2,
    holdout: Annotated[
        float, typer.Option(help="About this share of documents held out, by a seeded hash of each (0 to below 1).")
    ] = 0.3,
    tag: Annotated[str | None, typer.Option(help="Only documents of the index with this tag.")] = None,
    seed: Annotated[
        int, typer.Option(help="Fixes the split, the questions the rules write and the unanswerable rows.")
    ] = 0,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="A kept question retrieves its chunk in this many (RAGTUNE_TOP_K).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Write questions about the indexed documents (or --corpus DIR), split by document into train/ and holdout/.

    Each split is a BEIR folder that `ragtune eval` reads, with the JSONL rows `ragtune finetune` reads.

    With RAGTUNE_GENERATOR=openai or local the LLM writes each question and its answer; otherwise rules do.

    The index is only read.
    """
    from ragtune.eval.index import EmptyIndexError, describe, open_index
    from ragtune.tune.dataset import check_output, describe_synthesis, write_synthesis
    from ragtune.tune.synth import SynthError, SynthOptions, scratch_index, synthesize, writer_for

    settings = load_settings()
    llm = settings.answer.generator != "extractive"
    try:
        k = settings.retrieval.top_k if top_k is None else top_k
        options = SynthOptions(per_chunk, unanswerable, holdout, k, seed, tag)
        check_output(out)
        opened: AbstractContextManager[System]
        if corpus is None:
            opened = open_index(settings, generator=llm)  # read-only: the index must exist and hold chunks
        elif tag is not None:
            raise SynthError("--tag selects documents of the index; with --corpus every supported file is used")
        else:
            opened = scratch_index(corpus, settings, generator=llm)
        with opened as system:
            writer = writer_for(system)
            synthesis = synthesize(system, writer, options)
            source = {"corpus": str(corpus.resolve())} if corpus is not None else {"index": describe(settings)}
            manifest = write_synthesis(synthesis, out, describe_synthesis(source, writer.name, options, settings))
    except (SynthError, EmptyIndexError) as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        print_json(manifest)
    else:
        typer.echo(_summary(manifest, out))
