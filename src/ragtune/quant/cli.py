"""``ragtune quantize ...``: the NF4 tools on the command line.

Mounted by the main CLI with ``app.add_typer(quantize_app, name="quantize")``::

    ragtune quantize report smollm2 --out-dir quant-report --ppl-text docs.txt
    ragtune quantize report path/to/hf-model-dir --blocksize 128 --markdown
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

quantize_app = typer.Typer(
    help="NF4 4-bit quantization (QLoRA's NormalFloat): error reports.",
    no_args_is_help=True,
    add_completion=False,
)


@quantize_app.callback()
def _group() -> None:
    """NF4 4-bit quantization (QLoRA's NormalFloat): error reports."""


DEFAULT_CACHE = Path.home() / ".cache" / "ragtune" / "models"


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _load(model: str, cache_dir: Path) -> tuple[Any, Any, str]:
    """(model, tokenizer or None, display name). Causal LMs get a tokenizer for perplexity."""
    from ragtune.models import load_causal_lm, smollm2_gguf_path

    path = smollm2_gguf_path() if model == "smollm2" else Path(model).expanduser()
    # a directory's own name is often just "model": show its parent too
    name = "/".join(path.resolve().parts[-2:]) if path.is_dir() else path.name
    if path.is_dir():
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if not any(a.endswith("ForCausalLM") for a in config.architectures or []):
            return AutoModel.from_pretrained(path, local_files_only=True).eval(), None, name
    lm, tokenizer = load_causal_lm(path, cache_dir)
    return lm, tokenizer, name


@quantize_app.command("report")
def report(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL_DIR_OR_GGUF",
            help="An HF model directory, a .gguf file, or 'smollm2' for the packaged SmolLM2-135M.",
            show_default=False,
        ),
    ],
    out_dir: Annotated[Path, typer.Option(help="Where report.md, report.json and errors.png go.")] = Path(
        "quant-report"
    ),
    blocksize: Annotated[int, typer.Option(help="Weights per absmax block (power of two, 32-4096).")] = 64,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the Markdown report instead of terminal tables.")
    ] = False,
    skip: Annotated[
        list[str] | None,
        typer.Option(help="Linear layers to keep dense (full name or last name part)  [default: lm_head]"),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N linear layers (a quick look).")] = None,
    ppl_text: Annotated[
        Path | None,
        typer.Option(help="A UTF-8 text file: also report the perplexity of a causal LM on it."),
    ] = None,
    ppl_tokens: Annotated[int, typer.Option(min=16, help="Tokens of --ppl-text to score.")] = 1024,
    cache_dir: Annotated[Path, typer.Option(help="Where converted GGUF models are cached.")] = DEFAULT_CACHE,
) -> None:
    """Measure NF4, NF4+double-quant, FP4 and INT4 error on every linear weight of a model."""
    from ragtune.models import ModelNotFoundError
    from ragtune.quant.linear import DEFAULT_SKIP
    from ragtune.quant.nf4 import check_blocksize

    skip = skip or list(DEFAULT_SKIP)
    try:
        check_blocksize(blocksize)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    if ppl_text is not None and not ppl_text.is_file():
        raise _fail(f"--ppl-text {ppl_text} is not a file; give a UTF-8 text file", 2)
    try:
        lm, tokenizer, name = _load(model, cache_dir)
    except ModelNotFoundError as exc:
        raise _fail(str(exc), 2) from None
    except Exception as exc:  # a broken model file: say which and why, no traceback
        raise _fail(f"could not load {model}: {type(exc).__name__}: {exc}", 1) from None

    import torch
    from rich.console import Console

    from ragtune.quant.perplexity import perplexity_by_method
    from ragtune.quant.report import build_report

    start = time.perf_counter()
    rep = build_report(lm, name, blocksize=blocksize, skip=skip, limit=limit)
    if not rep.layers:
        raise _fail(f"{name} has no linear layers to quantize (skipped: {', '.join(rep.skipped) or 'none'})", 1)
    if ppl_text is not None:
        if tokenizer is None:
            raise _fail(f"{name} is not a causal LM: perplexity needs one (drop --ppl-text)", 2)
        text = ppl_text.read_text(encoding="utf-8", errors="replace")
        ids = torch.tensor(tokenizer(text)["input_ids"][:ppl_tokens])
        if ids.numel() < 16:
            raise _fail(f"{ppl_text} has only {ids.numel()} tokens; give a longer text", 2)
        rep.perplexity = perplexity_by_method(lm, ids, blocksize=blocksize, skip=skip)
        rep.perplexity_tokens = int(ids.numel())
    out_dir.mkdir(parents=True, exist_ok=True)
    md = rep.to_markdown()
    (out_dir / "report.md").write_text(md)
    (out_dir / "report.json").write_text(rep.to_json())
    png = rep.plot(out_dir / "errors.png")
    if markdown:
        sys.stdout.write(md)
    else:
        console = Console()
        for table in rep.rich_tables():
            console.print(table)
        console.print(rep.verdict())
    typer.echo(
        f"wrote {out_dir / 'report.md'}, {out_dir / 'report.json'}, {png} ({time.perf_counter() - start:.0f} s)",
        err=True,
    )
