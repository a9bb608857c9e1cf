"""Turn a trained adapter into what serving takes.

* The adapter directory itself (``output_dir/adapter``) is PEFT's format: it loads with
  stock ``peft.PeftModel.from_pretrained`` onto the dense base, is what vLLM's LoRA serving
  (``--enable-lora --lora-modules name=DIR``) takes, and what ``RAGTUNE_LLM_ADAPTER`` points
  the local generator at.
* `merge_adapter` folds it into the dense base weights (``W + B·A·alpha/r``), giving a
  plain transformers model directory for servers without LoRA support. QLoRA trains
  against NF4 weights but merges into the original dense ones, as the paper does:
  re-quantizing the merged weights would add a second rounding error.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

__all__ = ["merge_adapter"]


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write base + adapter merged, with the tokenizer, to ``out_dir`` (replaced atomically)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter directory")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, local_files_only=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base_dir, local_files_only=True).save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
