"""Does `ragtune tune answerer` teach SmolLM2 to abstain, on SQuAD 2.0's unanswerable questions?

1. The squad-dev articles are split as in bench/finetune_squad.py (seeded shuffle, 7 train, 3 test).
2. `ragtune synth --corpus` makes a rule-written question set (no LLM) from the 7 training
   articles' documents (docs/*.md), unanswerable rows included (--unanswerable 0.2); the set's
   own split holds some of those 7 out.
3. `ragtune tune answerer` fine-tunes SmolLM2-135M-Instruct (QLoRA) on the set's training rows and
   reports its synthetic holdout before and after.
4. `ragtune eval answers` (`evaluate_answers`) then runs on squad-dev's real questions about the 3
   test articles, which no training row came from, with the base model and with the adapter
   (and the extractive default beside them): a fixed-seed sample of N answerable questions and
   N of the SQuAD 2.0 unanswerable questions on those articles (with seed 0 only Rhine has any):
   unanswerable.jsonl is in source order, Computational complexity theory's 221, Rhine's 208,
   Victoria's 123 (SOURCE.md); a bm25s check of that attribution is stored with the results.

    OMP_NUM_THREADS=1 .venv/bin/python bench/tune_answerer.py                 # ~40 min on the shared 2-core CPU
    .venv/bin/python bench/tune_answerer.py --max-steps 1 --eval-questions 2 --holdout-questions 2   # a smoke run

Raw results: bench/results/tune_answerer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from finetune_squad import DATASET, ROOT, split_articles, write_subset

# unanswerable.jsonl, in file order (SOURCE.md's counts): which article each block of questions is about.
UNANSWERABLE_BLOCKS = [("computational-complexity-theory", 221), ("rhine", 208), ("victoria-australia", 123)]


def unanswerable_by_article(dataset: Path) -> dict[str, list[dict]]:
    rows = [json.loads(line) for line in (dataset / "unanswerable.jsonl").open()]
    assert len(rows) == sum(n for _, n in UNANSWERABLE_BLOCKS), "unanswerable.jsonl changed; recount the blocks"
    blocks, start = {}, 0
    for article, count in UNANSWERABLE_BLOCKS:
        blocks[article], start = rows[start : start + count], start + count
    return blocks


def attribution_check(dataset: Path, blocks: dict[str, list[dict]]) -> dict[str, float]:
    """Per block: the share of its questions whose best bm25s match among the three articles is its article."""
    import bm25s

    articles = list(blocks)
    texts = [(dataset / "docs" / f"{a}.md").read_text(encoding="utf-8") for a in articles]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    agreement = {}
    for n, article in enumerate(articles):
        queries = bm25s.tokenize([r["text"] for r in blocks[article]], stopwords="en", show_progress=False)
        top, _ = retriever.retrieve(queries, k=1, show_progress=False)
        agreement[article] = round(float((top[:, 0] == n).mean()), 3)
    return agreement


def ragtune(args: list[str], env: dict[str, str], log: Path) -> str:
    """One `ragtune` command; its stderr goes to `log`, its stdout is returned."""
    with log.open("w") as err:
        done = subprocess.run(
            [sys.executable, "-m", "ragtune.cli", *args], env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
    if done.returncode:
        raise SystemExit(f"ragtune {' '.join(args)} failed ({done.returncode}); see {log}")
    return done.stdout


def real_eval(test_dir: Path, args: argparse.Namespace, generator: str, adapter: str = "") -> dict:
    from ragtune.config import Settings
    from ragtune.eval.runner import evaluate_answers

    settings = Settings(
        generator=generator,
        llm_model="",
        llm_adapter=adapter,
        llm_quant="none",  # the adapter merged into the dense weights, as the local generator serves it
        llm_max_new_tokens=args.max_new_tokens,
        top_k=args.top_k,
        torch_threads=args.threads,
    )
    return evaluate_answers(test_dir, settings, limit=args.eval_questions, seed=args.seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out" / "tune-answerer")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "tune_answerer.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-articles", type=int, default=3)
    parser.add_argument("--unanswerable", type=float, default=0.2, help="ragtune synth --unanswerable")
    parser.add_argument("--eval-questions", type=int, default=40, help="real answerable and unanswerable, each")
    parser.add_argument("--holdout-questions", type=int, default=15, help="tune answerer --limit (synthetic)")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4)  # as bench/finetune_squad.py: a 135M model, few steps
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=3, help="chunks per prompt: synth round trip, training, eval")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()

    out = args.out_dir
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    train_articles, test_articles = split_articles(args.dataset, args.test_articles, args.seed)
    docs = out / "docs-train"
    docs.mkdir()
    for article in train_articles:
        shutil.copy(args.dataset / "docs" / f"{article}.md", docs)
    test_dir = out / "data-test"
    test_subset = write_subset(args.dataset, test_articles, test_dir)
    blocks = unanswerable_by_article(args.dataset)
    unanswerable = [row for article in test_articles for row in blocks.get(article, [])]
    (test_dir / "unanswerable.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unanswerable))
    print(f"train {train_articles}; test {test_articles}: {len(unanswerable)} unanswerable", file=sys.stderr)

    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "RAGTUNE_TORCH_THREADS": str(args.threads),
        "RAGTUNE_DATA_DIR": str(out / "data"),  # never an index of the checkout's
        "RAGTUNE_TOP_K": str(args.top_k),
        "RAGTUNE_LLM_MAX_NEW_TOKENS": str(args.max_new_tokens),
    }
    env.pop("RAGTUNE_GENERATOR", None)  # synth with the rules, not an LLM
    questions = out / "questions"
    timings = {}
    step = time.perf_counter()
    manifest = json.loads(
        ragtune(
            ["synth", "--corpus", str(docs), "--out", str(questions), "--unanswerable", str(args.unanswerable),
             "--holdout", "0.3", "--seed", str(args.seed), "--json"],
            env, out / "synth.log",
        )
    )  # fmt: skip
    timings["synth"] = round(time.perf_counter() - step, 1)

    step = time.perf_counter()
    tune = [
        "tune", "answerer", "--questions", str(questions), "--out", str(out / "run"),
        "--limit", str(args.holdout_questions), "--max-steps", str(args.max_steps),
        "--global-batch", str(args.global_batch), "--micro-batch", str(args.micro_batch), "--lr", str(args.lr),
        "--set", f"warmup_steps={min(args.warmup_steps, args.max_steps - 1)}", "--set", "save_every=0",
        "--set", f"seed={args.seed}", "--json",
    ]  # fmt: skip
    report = json.loads(ragtune(tune, env | {"RAGTUNE_GENERATOR": "local"}, out / "tune.log"))
    timings["tune_answerer"] = round(time.perf_counter() - step, 1)

    real = {}
    for name, generator, adapter in (
        ("extractive", "extractive", ""),
        ("before", "local", ""),
        ("after", "local", report["model"]),
    ):
        real[name] = real_eval(test_dir, args, generator, adapter)
        print(f"{name}: {real[name]}", file=sys.stderr)
    results = {
        "seed": args.seed,
        "train_articles": train_articles,
        "test_articles": test_articles,
        "test_subset": test_subset | {"unanswerable": len(unanswerable)},
        "unanswerable_attribution_bm25s_agreement": attribution_check(args.dataset, blocks),
        "synth_manifest": manifest,
        "tune_report": report,
        "real": real,
        "timings_s": timings | {"total": round(time.perf_counter() - started, 1)},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("timings_s", "unanswerable_attribution_bm25s_agreement")}, indent=2))


if __name__ == "__main__":
    main()
