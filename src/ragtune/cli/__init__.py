"""The `ragtune` command line. Exit codes: 0 success, 1 failure, 2 bad usage or input.

The commands live beside this file by what they do (`commands`: index, serve, administer;
`ask`: questions and conversations; `evaluate`: measurements; `synth`: question sets made
from the index; `tune`: embedder and answerer tuning, promotion); importing them registers them on `app`.
"""

from __future__ import annotations

import os
import sys

import typer

from ragtune.cli import ask, commands, evaluate, synth, tune
from ragtune.cli.common import UsageError, app

__all__ = ["app", "ask", "commands", "evaluate", "main", "synth", "tune"]


def main() -> None:
    """Entry point: domain errors become one clear line and an exit code, not a traceback."""
    from ragtune.embed.embedders import EmbeddingError
    from ragtune.eval.datasets import DatasetError
    from ragtune.ingest.reembed import EmbedderMismatchError
    from ragtune.store.base import StoreError
    from ragtune.store.catalog import CatalogError

    try:
        app()
    except (UsageError, DatasetError, EmbedderMismatchError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (StoreError, CatalogError, EmbeddingError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to continue where it stopped", err=True)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("RAGTUNE_DEBUG"):
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (set RAGTUNE_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
