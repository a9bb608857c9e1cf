"""Conversation evaluation: does a follow-up that only makes sense after the question before it find its passage?

Each item is a first question and a follow-up about the same subject that names it only by
a pronoun, with the follow-up's standalone form and its relevant passages. Retrieval of the
follow-up is measured three ways in one run: searched verbatim, rewritten by the configured
condenser after the pipeline answered the first question (what a user of a conversation
gets), and the standalone question itself (the ceiling).

Items come from a ``conversations.jsonl`` in the dataset folder when there is one
(``{"id", "first", "follow_up", "standalone", "relevant": [corpus ids]}`` per line), or
are built from its BEIR queries by this rule (`build_items`):

* a query whose text names its article (the title of its relevant passages, without a
  parenthesised part, e.g. "Victoria" for "Victoria (Australia)"), as a whole word,
  optionally after "the" and before "'s", becomes the follow-up with that mention replaced
  by "it" ("its" for the possessive; capitalised at the start);
* the first question is another query about the same article, drawn with a fixed seed.

    >>> follow_up_of("When did the Rhine become a border?", "Rhine")
    'When did it become a border?'
    >>> follow_up_of("What is Kenya's largest city?", "Kenya")
    'What is its largest city?'
    >>> follow_up_of("Kenya borders which ocean?", "Kenya"), follow_up_of("Where is Nairobi?", "Kenya")
    ('It borders which ocean?', None)
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ragtune.config import RetrievalMode, Settings
from ragtune.eval.datasets import BeirDataset, DatasetError, load_beir, read_jsonl
from ragtune.eval.metrics import recall_at_k
from ragtune.eval.runner import doc_ranking, fixed_sample, indexed_dataset, log_progress

CONVERSATIONS_FILE = "conversations.jsonl"
_DEPTH = 30  # chunks retrieved per question; enough distinct passages for R@5


@dataclass(frozen=True)
class ConversationItem:
    id: str
    first: str
    follow_up: str
    standalone: str
    relevant: list[str]


def follow_up_of(question: str, title: str) -> str | None:
    """`question` with its mention of `title` replaced by a pronoun; None when it has none."""
    name = re.sub(r"\s*\(.*?\)\s*", " ", title).strip()
    if not name:
        return None
    mention = re.compile(rf"\b(?:the\s+)?{re.escape(name)}('s|’s)?(?![\w-])", re.IGNORECASE)
    match = mention.search(question)
    if match is None:
        return None
    pronoun = "its" if match.group(1) else "it"
    if match.start() == 0:
        pronoun = pronoun.capitalize()
    return question[: match.start()] + pronoun + question[match.end() :]


def build_items(dataset: BeirDataset, seed: int = 0) -> list[ConversationItem]:
    """Items by the rule in the module docstring, in query order."""
    article_of: dict[str, str] = {}
    for query_id, relevant in dataset.qrels.items():
        titles = {dataset.corpus[c].title for c in relevant if c in dataset.corpus}
        if query_id in dataset.queries and len(titles) == 1:
            article_of[query_id] = titles.pop()
    by_article: dict[str, list[str]] = defaultdict(list)
    for query_id, title in article_of.items():
        by_article[title].append(query_id)
    rng = random.Random(seed)
    items = []
    for query_id, title in article_of.items():
        question = dataset.queries[query_id].strip()
        follow_up = follow_up_of(question, title)
        others = [q for q in by_article[title] if q != query_id]
        if follow_up is None or not others:
            continue
        first = dataset.queries[rng.choice(others)].strip()
        items.append(ConversationItem(query_id, first, follow_up, question, sorted(dataset.qrels[query_id])))
    return items


def load_items(dataset_dir: Path, dataset: BeirDataset, seed: int = 0) -> list[ConversationItem]:
    path = dataset_dir / CONVERSATIONS_FILE
    if not path.is_file():
        return build_items(dataset, seed)
    fields = ("id", "first", "follow_up", "standalone", "relevant")
    return [ConversationItem(**{k: row[k] for k in fields}) for _, row in read_jsonl(path, fields)]


def write_items(items: list[ConversationItem], path: Path) -> None:
    path.write_text("".join(json.dumps(asdict(i), ensure_ascii=False) + "\n" for i in items), encoding="utf-8")


def evaluate_conversations(
    dataset_dir: str | Path,
    settings: Settings,
    mode: RetrievalMode | None = None,
    limit: int | None = None,
    seed: int = 0,
    write: Path | None = None,
) -> dict[str, Any]:
    """R@5 (passage) and hit@5 (article) of each follow-up: verbatim, condensed, standalone;
    `write` also saves the items evaluated (as ``conversations.jsonl`` rows)."""
    directory = Path(dataset_dir)
    dataset = load_beir(directory)
    items = load_items(directory, dataset, seed)
    if not items:
        raise DatasetError(
            f"{directory}: no conversation items: no {CONVERSATIONS_FILE}, and no query names the title of its passages"
        )
    chosen = set(fixed_sample([i.id for i in items], limit, seed))
    items = [i for i in items if i.id in chosen]
    if write is not None:
        write_items(items, write)
    article = {doc.id: doc.title for doc in dataset.corpus.values()}
    sums = {f"{way}_{metric}": 0.0 for way in ("verbatim", "condensed", "standalone") for metric in ("r@5", "hit@5")}
    rewritten = fallbacks = 0
    examples: list[dict[str, str]] = []
    started = time.perf_counter()
    with indexed_dataset(dataset, settings) as system:
        rag = system.rag
        assert rag is not None
        for n, item in enumerate(items, start=1):
            first = rag.ask(item.first, mode=mode)
            condensed, condensed_hits, debug = rag.search(item.follow_up, _DEPTH, mode, history=[first.turn()])
            rewritten += condensed != item.follow_up
            fallbacks += "fallback" in debug.get("condense", {})
            rankings = {
                "verbatim": doc_ranking(rag.retriever.run(item.follow_up, _DEPTH, mode)),
                "condensed": doc_ranking(condensed_hits),
                "standalone": doc_ranking(rag.retriever.run(item.standalone, _DEPTH, mode)),
            }
            relevant = dict.fromkeys(item.relevant, 1)
            articles = {article[c] for c in item.relevant if c in article}
            for way, ranking in rankings.items():
                sums[f"{way}_r@5"] += recall_at_k(ranking, relevant, 5)
                sums[f"{way}_hit@5"] += any(article.get(c) in articles for c in ranking[:5])
            if len(examples) < 5:
                examples.append({"first": item.first, "follow_up": item.follow_up, "condensed": condensed})
            if n % 100 == 0:
                log_progress(f"conversations: {n}/{len(items)}")
    total = len(items)
    return {
        "dataset": str(dataset_dir),
        "mode": mode or settings.retrieval.mode,
        "condenser": rag.condenser.name,
        "n_items": total,
        "rewritten": round(rewritten / total, 4),
        "rules_fallback": round(fallbacks / total, 4),  # LLM rewrites refused as unusable (`usable_rewrite`)
        **{key: round(value / total, 4) for key, value in sums.items()},
        "examples": examples,
        "seconds": round(time.perf_counter() - started, 1),
    }
