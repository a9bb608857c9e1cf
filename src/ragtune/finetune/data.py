"""Training examples shaped like ragtune's own inference: question + retrieved chunks in
the generator's prompt, target = the short answer and its citation.

1. `read_examples` reads ``{question, answer, context?, title?}`` JSONL rows (an empty or
   null answer marks an unanswerable question) or a BEIR/SQuAD dataset directory (the
   gold context is the corpus record its qrels point to).
2. `build_rag_examples` gives each question ``top_k`` chunks: the retriever's hits (a
   ragtune index, or the dataset's corpus indexed in a scratch store), with the gold
   context put in when retrieval missed it; without a retriever, the gold context plus
   other rows' contexts as distractors. The target cites the chunk holding the answer
   (`ragtune.generate.prompts.render_target`), or is `NOT_FOUND` for unanswerable rows.
3. `tokenize_example` renders the prompt with the generator's template
   (`render_prompt`, so packing and truncation match inference) and masks it out of the
   loss: labels are -100 everywhere but the target tokens.
4. `prepare_examples` is what a training run calls: rank 0 builds the examples once
   (retrieving through `open_retriever`) and caches them in ``output_dir``; every process
   tokenizes them and splits off the held-out share. `StepSampler` then deals them out,
   one global batch per optimizer step.

    >>> ex = QAExample("Who created Milvus?", "Zilliz", "Milvus was created by Zilliz.")
    >>> [rag] = build_rag_examples([ex], retrieve=None, top_k=1)
    >>> rag.target, rag.hits[0].text
    ('Zilliz [1].', 'Milvus was created by Zilliz.')
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ragtune.eval.metrics import normalize_answer
from ragtune.finetune.config import ConfigError, FinetuneConfig
from ragtune.finetune.deepspeed import Processes, all_sum
from ragtune.generate.prompts import render_prompt, render_target
from ragtune.types import Hit

if TYPE_CHECKING:
    from ragtune.system import System

__all__ = [
    "DataError",
    "QAExample",
    "RagExample",
    "StepSampler",
    "TokenizedExample",
    "build_rag_examples",
    "collate",
    "open_retriever",
    "prepare_examples",
    "read_examples",
    "tokenize_example",
]

IGNORE_INDEX = -100  # torch cross_entropy's default ignore_index: no loss on these positions

Retrieve = Callable[[list[str], int], list[list[Hit]]]


class DataError(ValueError):
    """The training data cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class QAExample:
    question: str
    answer: str | None  # None: the documents do not answer it; the target is NOT_FOUND
    context: str | None = None  # the passage that holds the answer, when known
    title: str = ""


@dataclass(frozen=True)
class RagExample:
    question: str
    hits: tuple[Hit, ...]
    target: str
    cited: tuple[int, ...]  # 1-based chunk numbers the target cites (empty for NOT_FOUND)


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def target_tokens(self) -> int:
        """Tokens the loss is computed on (the first token is never predicted)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def _read_jsonl(path: Path) -> list[QAExample]:
    from ragtune.eval.datasets import DatasetError, read_jsonl

    try:
        rows = read_jsonl(path, ("question", "answer"))
    except DatasetError as exc:
        raise DataError(f"{exc} (a null answer marks an unanswerable question)") from None
    examples = []
    for number, row in rows:
        where = f"{path}:{number}"
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise DataError(f"{where}: 'question' must be a non-empty string")
        answer, context = row["answer"], row.get("context")
        if answer is not None and not isinstance(answer, str):
            raise DataError(f"{where}: 'answer' must be a string or null, got {type(answer).__name__}")
        if context is not None and not isinstance(context, str):
            raise DataError(f"{where}: 'context' must be a string, got {type(context).__name__}")
        examples.append(
            QAExample(
                row["question"].strip(), (answer or "").strip() or None, context or None, str(row.get("title") or "")
            )
        )
    return examples


def _read_beir(directory: Path, documents: Callable[[str], bool] | None) -> list[QAExample]:
    from ragtune.eval.datasets import DatasetError, load_beir

    try:
        dataset = load_beir(directory)
    except DatasetError as exc:
        raise DataError(str(exc)) from None
    examples = []
    for qid, question in dataset.queries.items():
        golds = [doc for doc, score in dataset.qrels.get(qid, {}).items() if score > 0 and doc in dataset.corpus]
        if not golds or not dataset.answers.get(qid) or (documents and not documents(golds[0])):
            continue
        doc = dataset.corpus[golds[0]]
        examples.append(QAExample(question.strip(), dataset.answers[qid][0], doc.text, doc.title))
    return examples


def read_examples(data: str | Path, documents: Callable[[str], bool] | None = None) -> list[QAExample]:
    """Read a JSONL file or a BEIR dataset directory (``documents`` filters by corpus id)."""
    path = Path(data).expanduser()
    if path.is_dir():
        examples = _read_beir(path, documents)
    elif path.is_file():
        examples = _read_jsonl(path)
    else:
        raise DataError(f"training data {path} not found: give a .jsonl file or a BEIR dataset directory")
    if not examples:
        raise DataError(f"{path} holds no training examples")
    return examples


def _squash(text: str) -> str:
    return " ".join(text.split())


def _context_hit(example: QAExample, number: int) -> Hit:
    assert example.context is not None
    return Hit(
        f"gold-{number}",
        f"gold-{number}",
        example.context,
        example.title or "training data",
        example.title,
        0,
        "",
        (),
        0.0,
    )


def _holds(hit: Hit, answer: str) -> bool:
    return normalize_answer(answer) in normalize_answer(hit.text)


def _is_gold(hit: Hit, context: str) -> bool:
    # A chunk of the gold passage, or the passage itself (chunking may split long ones).
    a, b = _squash(hit.text), _squash(context)
    return a in b or b in a


def build_rag_examples(
    examples: Sequence[QAExample], retrieve: Retrieve | None, top_k: int, seed: int = 0
) -> list[RagExample]:
    """Give each question ``top_k`` chunks and its cited target (see the module docstring).

    A row with an answer but no context, whose retrieved chunks do not contain the
    answer, is left out: its target would cite a chunk that does not support it.
    """
    rng = random.Random(seed)
    retrieved = retrieve([e.question for e in examples], top_k) if retrieve else [[] for _ in examples]
    contexts = [e for e in examples if e.context]
    built = []
    for number, (example, found) in enumerate(zip(examples, retrieved)):
        hits = list(found[:top_k])
        if example.context:
            if not any(_is_gold(h, example.context) for h in hits):
                if retrieve is None:
                    others = [c for c in contexts if c.context != example.context]
                    hits = [_context_hit(c, n) for n, c in enumerate(rng.sample(others, min(top_k - 1, len(others))))]
                else:
                    hits = hits[: top_k - 1]
                hits.insert(rng.randrange(len(hits) + 1), _context_hit(example, number))
            gold = [i + 1 for i, h in enumerate(hits) if _is_gold(h, example.context)]
        else:
            gold = []
        if example.answer is None:
            built.append(RagExample(example.question, tuple(hits), render_target(None), ()))
            continue
        cited = [i for i in gold if _holds(hits[i - 1], example.answer)] or gold[:1]
        if not cited:
            cited = [i + 1 for i, h in enumerate(hits) if _holds(h, example.answer)][:1]
        if not cited:
            continue
        built.append(RagExample(example.question, tuple(hits), render_target(example.answer, cited), tuple(cited)))
    return built


def save_rag_examples(examples: Sequence[RagExample], path: Path) -> None:
    """Write the built examples as JSONL (what the model is trained on, for inspection)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for ex in examples:
            row = {
                "question": ex.question,
                "target": ex.target,
                "cited": list(ex.cited),
                "hits": [asdict(h) for h in ex.hits],
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def load_rag_examples(path: Path) -> list[RagExample]:
    examples = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            hits = tuple(Hit(**{**h, "tags": tuple(h["tags"])}) for h in row["hits"])
            examples.append(RagExample(row["question"], hits, row["target"], tuple(row["cited"])))
    return examples


def data_fingerprint(data: str | Path, *parts: Any) -> str:
    """Identifies built examples: the data file(s) content and the build options."""
    path = Path(data).expanduser()
    digest = hashlib.sha256(repr(parts).encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def tokenize_example(example: RagExample, tokenizer: Any, max_seq_len: int) -> TokenizedExample | None:
    """Prompt + target token ids with the prompt masked out of the loss.

    The prompt is packed by `render_prompt` into ``max_seq_len`` minus the target, exactly
    as at inference; None when the packed prompt lost a chunk the target cites (or the
    question alone does not fit).
    """
    eos = tokenizer.eos_token or ""
    target_ids = tokenizer(example.target + eos, add_special_tokens=False)["input_ids"]
    try:
        prompt = render_prompt(
            example.question, example.hits, tokenizer, context_tokens=max_seq_len, max_new_tokens=len(target_ids)
        )
    except ValueError:
        return None
    if any(c > prompt.n_hits for c in example.cited):
        return None
    prompt_ids = tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
    return TokenizedExample(prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids)


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad to a common length, with position ids counted from each sequence's start.

    Left padding puts every target at the end of its row, so the loss needs logits for
    only the last ``max target length + 1`` positions (the vocabulary projection of the
    prompt is never computed); explicit position ids keep a row's outputs independent of
    how much padding its batch needed.
    """
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, length - n :] = torch.tensor(example.input_ids)
        labels[row, length - n :] = torch.tensor(example.labels)
        attention_mask[row, length - n :] = 1
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "position_ids": position_ids}


# --- a training run's examples ---------------------------------------------------------


@contextmanager
def open_retriever(config: FinetuneConfig) -> Iterator[Retrieve | None]:
    """Retrieval for building prompts: a BEIR dataset's corpus indexed in a scratch store,
    or the ragtune index named by ``config.index``; None for plain JSONL."""
    from ragtune.config import Settings

    data = Path(config.data).expanduser()
    if data.is_dir():
        from ragtune.eval.datasets import load_beir
        from ragtune.eval.runner import indexed_dataset

        opened: AbstractContextManager[System] = indexed_dataset(load_beir(data), Settings(), generator=False)
    elif config.index:
        from ragtune.system import build

        opened = build(Settings(data_dir=Path(config.index).expanduser()), generator=False)
    else:
        yield None
        return
    with opened as system:

        def retrieve(questions: list[str], top_k: int) -> list[list[Hit]]:
            return system.retriever.run_many(questions, top_k=top_k)

        yield retrieve


def _build_on_rank_0(config: FinetuneConfig, processes: Processes) -> Path:
    """Rank 0 builds the RAG examples into output_dir/examples.jsonl unless a build from the
    same data and options is there; every process returns its path once it is (or raises
    rank 0's error)."""
    cache = config.output_dir / "examples.jsonl"
    stamp = config.output_dir / "examples.fingerprint"
    failure: DataError | None = None
    # Only rank 0 builds, so only it reads the data to fingerprint it.
    fingerprint = data_fingerprint(config.data, config.top_k, config.index, config.seed) if processes.is_main else ""
    if processes.is_main and not (cache.is_file() and stamp.is_file() and stamp.read_text() == fingerprint):
        try:
            raw = read_examples(config.data)
            with open_retriever(config) as retrieve:
                built = build_rag_examples(raw, retrieve, config.top_k, config.seed)
            save_rag_examples(built, cache)
            stamp.write_text(fingerprint)
            print(
                f"built {len(built)} RAG examples from {len(raw)} rows of {config.data} -> {cache}",
                file=sys.stderr,
                flush=True,
            )
        except DataError as exc:
            failure = exc
    # The other processes wait for rank 0 here: tell them when it failed, or they wait forever.
    if all_sum([float(failure is not None)], processes)[0]:
        raise failure or DataError(f"rank 0 could not build the examples from {config.data}; see its message")
    return cache


def prepare_examples(
    config: FinetuneConfig, tokenizer: Any, processes: Processes
) -> tuple[list[TokenizedExample], list[TokenizedExample], dict[str, int]]:
    """Build (once, on rank 0, cached in output_dir) and tokenize the RAG-shaped examples;
    split off the held-out evaluation share (seeded). Returns (train, eval, counts)."""
    rag = load_rag_examples(_build_on_rank_0(config, processes))
    tokenized = [tokenize_example(e, tokenizer, config.max_seq_len) for e in rag]
    kept = [t for t in tokenized if t is not None]
    if not kept:
        raise ConfigError(f"no example fits max_seq_len {config.max_seq_len} with its cited chunk; raise max_seq_len")
    order = list(range(len(kept)))
    random.Random(config.seed).shuffle(order)
    n_eval = min(len(kept) - 1, round(len(kept) * config.eval_fraction)) if config.eval_fraction else 0
    eval_ids, train_ids = set(order[:n_eval]), order[n_eval:]
    train_set = [kept[i] for i in sorted(train_ids)]
    eval_set = [kept[i] for i in sorted(eval_ids)]
    counts = {"built": len(rag), "too_long": len(rag) - len(kept), "train": len(train_set), "eval": len(eval_set)}
    return train_set, eval_set, counts


class StepSampler:
    """Which examples each optimizer step gets: a fresh permutation every epoch (seeded by
    ``seed + epoch``), consumed ``global_batch`` at a time. Its state is two integers, so a
    resumed run continues with exactly the examples the interrupted one would have seen."""

    def __init__(self, size: int, global_batch: int, seed: int, shuffle: bool) -> None:
        self.size, self.global_batch, self.seed, self.shuffle = size, global_batch, seed, shuffle
        self.epoch, self.cursor = 0, 0

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def next_step(self) -> list[int]:
        chosen: list[int] = []
        while len(chosen) < self.global_batch:
            order = self._order(self.epoch)
            take = order[self.cursor : self.cursor + self.global_batch - len(chosen)]
            chosen += take
            self.cursor += len(take)
            if self.cursor >= self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
        return chosen

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
