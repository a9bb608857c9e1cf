"""What every `ragtune` command shares: the Typer apps, settings and system loading, usage errors."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from ragtune.config import RETRIEVAL_MODES
from ragtune.finetune.cli import finetune_app
from ragtune.quant.cli import quantize_app

# Models load from local paths only; keep libraries from reaching for a hub or chattering.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
# bitsandbytes (imported by peft, which sentence-transformers imports) warns on every start
# that it cannot fetch an optional CPU kernel from the hub; ragtune never asks for it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# torchao (the int8 extra, which transformers imports with every model class) warns on a CPU
# build of torch that its CUDA kernels do not load, and torch that it registers Enums itself.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

app = typer.Typer(
    help="Answer questions over your documents with citations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app = typer.Typer(
    help="Measure retrieval, answers and conversations on a BEIR-format dataset; compare two results.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")
app.add_typer(quantize_app, name="quantize")
app.add_typer(finetune_app, name="finetune")
tune_app = typer.Typer(
    help="Adapt the embedder and the answerer to the indexed documents, promoting a model only when it measures better.",
    no_args_is_help=True,
)
app.add_typer(tune_app, name="tune")
keys_app = typer.Typer(help="API keys for the HTTP service (stored hashed in the catalog).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


MODES_HELP = f"{', '.join(RETRIEVAL_MODES[:-1])} or {RETRIEVAL_MODES[-1]}."


class UsageError(Exception):
    """Bad input from the user: exit code 2."""


def load_settings(**overrides: Any):  # -> Settings; imported lazily to keep --help fast
    from pydantic import ValidationError

    from ragtune.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"invalid settings: {problems}") from None


def open_system(settings, generator: bool = False):  # -> System
    from ragtune.system import build

    return build(settings, generator=generator)


def check_mode(mode: str | None) -> None:
    if mode is not None and mode not in RETRIEVAL_MODES:
        raise UsageError(f"--mode must be one of {', '.join(RETRIEVAL_MODES)}; got {mode!r}")


WHERE_HELP = (
    "Only documents whose metadata matches: key=value, key!=value, key>=n (also >, <=, <) or key=a|b "
    "(any of); repeatable, all must hold."
)
COLLECTION_HELP = "Only these collections (repeatable); default: every collection."


def search_filters(
    sources: list[str] | None, tags: list[str] | None, collections: list[str] | None, where: list[str] | None
):  # -> Filters
    """The search filters of `ask` and `chat`; UsageError for a bad collection name or --where."""
    from ragtune.types import Filters, MetadataError, check_collection, metadata_conditions, parse_where

    try:
        conditions = tuple(c for clause in where or () for c in metadata_conditions(parse_where(clause)))
        names = tuple(check_collection(name) for name in collections or ())
    except MetadataError as exc:
        raise UsageError(str(exc)) from None
    return Filters(sources=tuple(sources or ()), tags=tuple(tags or ()), metadata=conditions, collections=names)


def print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str, ensure_ascii=False))


@app.callback()
def _root(
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML settings file (same as RAGTUNE_CONFIG).")
    ] = None,
    local_rank: Annotated[int | None, typer.Option("--local_rank", "--local-rank", hidden=True)] = None,
) -> None:
    # The `deepspeed` launcher passes --local_rank=N right after the module name; the rank
    # itself is read from LOCAL_RANK, which it sets too.
    del local_rank
    if config is not None:
        if not config.is_file():
            raise UsageError(f"--config {config}: no such file")
        os.environ["RAGTUNE_CONFIG"] = str(config)
