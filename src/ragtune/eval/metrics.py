"""Retrieval metrics (BEIR/trec_eval definitions) and SQuAD answer metrics.

>>> from ragtune.eval.metrics import ndcg_at_k, squad_f1
>>> round(ndcg_at_k(["b", "a"], {"a": 1}, 10), 4)
0.6309
>>> squad_f1("the Rhine river", ["Rhine"])
0.6666666666666666
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence


def recall_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    positives = {d for d, r in relevant.items() if r > 0}
    return len(positives.intersection(ranked[:k])) / len(positives) if positives else 0.0


def mrr_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    for rank, doc in enumerate(ranked[:k], start=1):
        if relevant.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], start=1))
    ideal = sorted((r for r in relevant.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(rank + 1) for rank, r in enumerate(ideal, start=1))
    return dcg / idcg if idcg else 0.0


def retrieval_metrics(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean metrics over the queries that have judgements."""
    judged = [q for q in qrels if q in rankings]
    n = len(judged) or 1
    metrics = {
        "recall@1": sum(recall_at_k(rankings[q], qrels[q], 1) for q in judged) / n,
        "recall@5": sum(recall_at_k(rankings[q], qrels[q], 5) for q in judged) / n,
        "recall@10": sum(recall_at_k(rankings[q], qrels[q], 10) for q in judged) / n,
        "mrr@10": sum(mrr_at_k(rankings[q], qrels[q], 10) for q in judged) / n,
        "ndcg@10": sum(ndcg_at_k(rankings[q], qrels[q], 10) for q in judged) / n,
    }
    return {name: round(value, 4) for name, value in metrics.items()} | {"n_queries": len(judged)}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, golds: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    def f1(pred: str, gold: str) -> float:
        p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
        common = sum((Counter(p) & Counter(g)).values())
        if not p or not g:
            return float(p == g)
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(g)
        return 2 * precision * recall / (precision + recall)

    return max((f1(prediction, g) for g in golds), default=0.0)
