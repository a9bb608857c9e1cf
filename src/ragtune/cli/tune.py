"""`ragtune tune`: adapt the embedder and the answerer to the indexed documents, from a
`ragtune synth` question set; each run writes report.json and promotes only a better model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ragtune.cli.common import UsageError, load_settings, print_json, tune_app
from ragtune.finetune.cli import SET_HELP, config_flag, parse_set

if TYPE_CHECKING:
    from ragtune.tune.report import TuneReport

__all__ = ["tune_app"]

MARGIN_HELP = "Promote only if no metric falls by more than this (absolute: 0.01 is one point of nDCG or F1)."
MIN_GAIN_HELP = "Promote only if the main metric rises by more than this."
PROMOTE_HELP = "Promote the model into the live configuration if it measured better (see `ragtune tune promote`)."


def check_promotable(kind: str) -> None:
    """Before training: exit 2 when --promote could not take effect."""
    from ragtune.tune.promote import PromotionError
    from ragtune.tune.promote import check_promotable as check

    try:
        check(load_settings(), kind)
    except PromotionError as exc:
        raise UsageError(str(exc)) from None


def report_promotion(report: TuneReport, margin: float, min_gain: float) -> None:
    """Promotes the report's model if it measured better (`ragtune.tune.promote`), prints why, and
    rewrites the report with the decision; exit 1 when it is not promoted."""
    from ragtune.tune.promote import PromotionError, promote

    try:
        decision = promote(load_settings(), report, margin, min_gain)
    except (PromotionError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    verdict = "promoted" if decision.promote else "not promoted, the live model stays"
    typer.echo(f"{report.kind} {report.model}: {verdict}: {'; '.join(decision.reasons)}")
    if decision.promote:
        typer.echo("running services serve it after: POST /v1/admin/reload (or a restart)")


def promote_run(report: TuneReport, out: Path, margin: float, min_gain: float, as_json: bool) -> None:
    """--promote after a run: the decision printed (on stderr when stdout is the JSON report) and written."""
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        report_promotion(report, margin, min_gain)
    report.write(out / "report.json")


@tune_app.command("promote")
def promote_report(
    report_file: Annotated[Path, typer.Argument(help="The report.json of a `ragtune tune embedder|answerer` run.")],
    margin: Annotated[float, typer.Option(min=0.0, help=MARGIN_HELP)] = 0.01,
    min_gain: Annotated[float, typer.Option(min=0.0, help=MIN_GAIN_HELP)] = 0.0,
) -> None:
    """Promote a tuned model into the live configuration if its report shows it is better.

    An embedder is promoted with its vectors: the index is re-embedded with it first (as
    `ragtune reindex` does). Promoting an older report again is how to roll back.
    """
    from ragtune.tune.report import ReportError, TuneReport

    try:
        report = TuneReport.read(report_file)
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    report_promotion(report, margin, min_gain)
    report.write(report_file)
    if not report.promoted:
        raise typer.Exit(1)


@tune_app.command("status")
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Which embedder and adapter are promoted for the configured collection, newest first."""
    from ragtune.store.promotions import Promotions
    from ragtune.system import open_catalog

    settings = load_settings()
    catalog = open_catalog(settings)
    try:
        history = Promotions(catalog).history(settings.store.collection)
    finally:
        catalog.close()
    rows = [
        {
            "kind": p.kind,
            "path": p.path,
            "promoted_at": p.promoted_at.isoformat(),
            "main_metric": p.report.get("main_metric"),
            "before": p.report.get("before", {}).get(p.report.get("main_metric", ""), None),
            "after": p.report.get("after", {}).get(p.report.get("main_metric", ""), None),
        }
        for p in history
    ]
    if as_json:
        print_json({"collection": settings.store.collection, "promotions": rows})
        return
    if not rows:
        typer.echo(f"nothing promoted for {settings.store.collection!r}: the configured models are served")
    live = {"embedder": False, "answerer": False}
    for row in rows:
        state = "live" if not live[row["kind"]] else "earlier"
        live[row["kind"]] = True
        typer.echo(
            f"{state:8} {row['kind']:9} {row['path']}  {row['promoted_at']}  "
            f"{row['main_metric']} {row['before']} -> {row['after']}"
        )


def report_table(report: TuneReport) -> str:
    """The report's metrics before and after, and the change (+ is better, whatever the metric's direction)."""
    from ragtune.tune.report import change

    lines = [f"{'metric':20} {'before':>8} {'after':>8} {'better by':>10}"]
    for metric in sorted(set(report.before) | set(report.after), key=lambda m: (m != report.main_metric, m)):
        before, after = report.before.get(metric), report.after.get(metric)
        gain = f"{change(metric, before, after):+.4f}" if before is not None and after is not None else "-"
        shown = [f"{v:.4f}" if v is not None else "-" for v in (before, after)]
        lines.append(f"{metric:20} {shown[0]:>8} {shown[1]:>8} {gain:>10}")
    return "\n".join(lines)


@tune_app.command("answerer")
def answerer(
    questions: Annotated[
        Path, typer.Option("--questions", help="A `ragtune synth` set: trains on its train/, measures its holdout/.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the run (absent or empty): adapter/, report.json, training logs.")
    ],
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Measure a fixed-seed sample of N answerable and N unanswerable held-out questions."),
    ] = None,
    max_steps: Annotated[int | None, config_flag("max_steps")] = None,
    global_batch: Annotated[int | None, config_flag("global_batch")] = None,
    micro_batch: Annotated[int | None, config_flag("micro_batch")] = None,
    lr: Annotated[float | None, config_flag("lr")] = None,
    lora_r: Annotated[int | None, config_flag("lora_r")] = None,
    set_: Annotated[list[str], typer.Option("--set", metavar="KEY=VALUE", help=SET_HELP)] = [],  # noqa: B006
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Go on with a run stopped in --out: its measurement before, its last checkpoint."
        ),
    ] = False,
    promote: Annotated[bool, typer.Option("--promote", help=PROMOTE_HELP)] = False,
    margin: Annotated[float, typer.Option(min=0.0, help=MARGIN_HELP)] = 0.01,
    min_gain: Annotated[float, typer.Option(min=0.0, help=MIN_GAIN_HELP)] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Fine-tune the local generator (QLoRA, as `ragtune finetune`) on a synth set's training rows, unanswerable
    ones included, and answer its held-out questions before and after (as `ragtune eval answers`).

    Needs RAGTUNE_GENERATOR=local. The held-out questions are asked of the index the set was made from,
    or of a scratch copy of its corpus for a set made with --corpus.
    """
    from dataclasses import asdict

    from ragtune.finetune.batch_plan import BatchPlanError
    from ragtune.finetune.config import ConfigError
    from ragtune.finetune.data import DataError
    from ragtune.tune.answerer import TrainingInterrupted, TuneError, tune_answerer
    from ragtune.tune.synth import SynthError

    if promote:
        check_promotable("answerer")
    flags = {"max_steps": max_steps, "global_batch": global_batch, "micro_batch": micro_batch, "lr": lr}
    options = {**flags, "lora_r": lora_r, **parse_set(set_)}
    try:
        report = tune_answerer(load_settings(), questions, out, options, limit, resume=resume)
    except (TuneError, SynthError, ConfigError, DataError, BatchPlanError) as exc:
        raise UsageError(str(exc)) from None
    except TrainingInterrupted as exc:
        typer.echo(f"interrupted: {exc}; go on with the same command and --resume", err=True)
        raise typer.Exit(130) from None
    if promote:
        promote_run(report, out, margin, min_gain, as_json)
    if as_json:
        print_json(asdict(report))
        return
    typer.echo(report_table(report))
    typer.echo(f"adapter {report.model}; report {out / 'report.json'}")


@tune_app.command("embedder")
def embedder(
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder for the run (absent or empty): model/, report.json, questions/."),
    ],
    corpus: Annotated[
        Path | None,
        typer.Option(help="Write the questions about this folder's files (a scratch index) instead of the index's."),
    ] = None,
    questions: Annotated[
        Path | None,
        typer.Option("--questions", help="A `ragtune synth` set: trains on its train/, measures its holdout/."),
    ] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the training questions.")] = 1.0,
    batch_size: Annotated[
        int, typer.Option(help="Questions per step; each is ranked against the batch's other chunks.")
    ] = 32,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate (10% warmup, then linear decay).")] = 5e-5,
    hard_negatives: Annotated[
        int, typer.Option(help="Retrieved chunks per question trained as negatives, besides the batch's.")
    ] = 1,
    per_chunk: Annotated[
        int | None, typer.Option(help="Questions written per chunk [default: 3] (not with --questions).")
    ] = None,
    holdout: Annotated[
        float | None,
        typer.Option(help="Share of documents held out for measuring [default: 0.3] (not with --questions)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Fixes the split, the questions and the training order.")] = 0,
    promote: Annotated[bool, typer.Option("--promote", help=PROMOTE_HELP)] = False,
    margin: Annotated[float, typer.Option(min=0.0, help=MARGIN_HELP)] = 0.01,
    min_gain: Annotated[float, typer.Option(min=0.0, help=MIN_GAIN_HELP)] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Fine-tune the embedding model on questions about the indexed documents (or --corpus DIR), with
    in-batch and retrieved hard negatives, and measure dense, hybrid and BM25 retrieval of the held-out
    documents' questions before and after.

    The questions are written by rules, or by the LLM with RAGTUNE_GENERATOR=openai or local, and split
    by document. The index is only read; the tuned model is OUT/model, served once
    RAGTUNE_EMBEDDING_MODEL names it and `ragtune reindex` has re-embedded the index.
    """
    import contextlib
    import sys
    from dataclasses import asdict

    from ragtune.eval.index import EmptyIndexError
    from ragtune.tune.embedder import EmbedderOptions, training_summary, tune_embedder
    from ragtune.tune.pairs import TuneError
    from ragtune.tune.synth import SynthError

    if questions is not None and (per_chunk, holdout) != (None, None):
        raise UsageError("--per-chunk and --holdout shape the questions written here; a --questions set has its own")
    if promote:
        check_promotable("embedder")
    try:
        default = EmbedderOptions()
        options = EmbedderOptions(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            hard_negatives=hard_negatives,
            per_chunk=default.per_chunk if per_chunk is None else per_chunk,
            holdout=default.holdout if holdout is None else holdout,
            seed=seed,
        )
        # What the training libraries print (DeepSpeed's accelerator notice, on import) is not the report.
        with contextlib.redirect_stdout(sys.stderr):
            report = tune_embedder(load_settings(), out, options, corpus=corpus, questions=questions)
    except (TuneError, SynthError, EmptyIndexError) as exc:
        raise UsageError(str(exc)) from None
    if promote:
        promote_run(report, out, margin, min_gain, as_json)
    if as_json:
        print_json(asdict(report))
        return
    typer.echo(training_summary(report))
    typer.echo(report_table(report))
    typer.echo(f"model {report.model}; report {out / 'report.json'}")
    if not promote:
        typer.echo(f"to serve it: ragtune tune promote {out / 'report.json'} (promoted only if better)")
