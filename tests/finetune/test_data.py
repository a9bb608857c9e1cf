"""Training examples are shaped like inference: the generator's own prompt, retrieved
chunks with the gold one present, a cited target, and loss on the target tokens only."""

from __future__ import annotations

import json
import re

import pytest
from transformers import AutoTokenizer

from ragtune.finetune.data import (
    IGNORE_INDEX,
    DataError,
    QAExample,
    build_rag_examples,
    collate,
    read_examples,
    tokenize_example,
)
from ragtune.generate.base import NOT_FOUND
from ragtune.generate.prompts import render_prompt
from ragtune.types import Hit
from tests.conftest import SQUAD_MINI


def _hit(text: str, n: int) -> Hit:
    return Hit(f"c{n}", f"d{n}", text, f"/docs/{n}.md", f"doc {n}", 0, "", (), 1.0 / (n + 1))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "qa.jsonl:2: not valid JSON"),
        ('{"answer": "x"}', "qa.jsonl:2: missing question"),
        ('{"question": "q"}', "qa.jsonl:2: missing answer (a null answer marks an unanswerable question)"),
        ('{"question": " ", "answer": "x"}', "qa.jsonl:2: 'question' must be a non-empty string"),
        ('{"question": "q", "answer": 3}', "qa.jsonl:2: 'answer' must be a string or null"),
        ("[1, 2]", "qa.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_jsonl_rows_are_named_by_line(tmp_path, line, message):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n' + line + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        read_examples(path)


def test_missing_or_empty_data_is_an_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_examples(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no training examples"):
        read_examples(tmp_path / "empty.jsonl")


def test_beir_dataset_rows_carry_their_gold_paragraph():
    examples = read_examples(SQUAD_MINI)
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in (SQUAD_MINI / "corpus.jsonl").open()}
    first = examples[0]
    assert len(examples) == 522
    assert first.answer and first.context and first.answer.lower() in first.context.lower()
    assert first.context in {doc["text"] for doc in corpus.values()}


def test_retrieved_chunks_keep_the_gold_one_and_the_target_cites_it():
    gold = "Milvus was created by Zilliz in 2019."
    ex = QAExample("Who created Milvus?", "Zilliz", gold, "Milvus")

    def misses(questions, k):  # retrieval that does not find the gold passage
        return [[_hit(f"unrelated text number {n}", n) for n in range(k)] for _ in questions]

    [built] = build_rag_examples([ex], misses, top_k=3, seed=1)
    texts = [h.text for h in built.hits]
    assert len(texts) == 3 and gold in texts
    position = texts.index(gold) + 1
    assert built.cited == (position,) and built.target == f"Zilliz [{position}]."

    def finds(questions, k):  # retrieval that ranks the gold passage second
        return [[_hit("noise", 0), _hit(gold, 1), _hit("more noise", 2)][:k] for _ in questions]

    [built] = build_rag_examples([ex], finds, top_k=3)
    assert [h.text for h in built.hits] == ["noise", gold, "more noise"] and built.target == "Zilliz [2]."


def test_unanswerable_rows_teach_not_found_and_unsupported_answers_are_dropped():
    rows = [QAExample("Who hacked it?", None), QAExample("What colour is it?", "blue")]

    def retrieve(questions, k):
        return [[_hit("the sky is grey", 0)] for _ in questions]

    built = build_rag_examples(rows, retrieve, top_k=2)
    # "blue" is in no chunk and has no gold context: a target citing [1] would be a lie.
    assert [(b.question, b.target, b.cited) for b in built] == [("Who hacked it?", NOT_FOUND, ())]


def test_tokenized_example_is_the_inference_prompt_plus_a_masked_in_target(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ex = QAExample("who created milvus ?", "zilliz", "milvus was created by zilliz .")
    [rag] = build_rag_examples([ex], retrieve=None, top_k=1)
    tokens = tokenize_example(rag, tokenizer, max_seq_len=512)
    prompt = render_prompt(rag.question, rag.hits, tokenizer, context_tokens=512, max_new_tokens=8)
    prompt_ids = tokenizer(prompt.text, add_special_tokens=False)["input_ids"]

    assert tokens.input_ids[: len(prompt_ids)] == prompt_ids
    assert tokens.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    target = [t for t in tokens.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(target) == tokenizer.decode(tokenizer("zilliz [1] .")["input_ids"]) + " <|im_end|>"
    assert tokens.target_tokens == len(target)


def test_a_prompt_that_would_lose_the_cited_chunk_is_dropped(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_chunk = " ".join(["milvus is a vector database ."] * 40)
    rag = build_rag_examples(
        [QAExample("who created milvus ?", "zilliz", "milvus was created by zilliz .")],
        lambda qs, k: [[_hit(long_chunk, 0), _hit("milvus was created by zilliz .", 1)] for _ in qs],
        top_k=2,
    )[0]
    assert rag.cited == (2,)
    assert tokenize_example(rag, tokenizer, max_seq_len=4096) is not None
    assert tokenize_example(rag, tokenizer, max_seq_len=200) is None  # packing drops chunk 2


def test_collate_left_pads_and_counts_positions_from_each_start(tiny_model_dir):
    from ragtune.finetune.data import TokenizedExample

    batch = collate([TokenizedExample([5, 6, 7], [-100, 6, 7]), TokenizedExample([8], [-100])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]


def test_jsonl_rows_retrieve_their_chunks_from_a_ragtune_index(tmp_path, sample_dir, settings, embedder, make_config):
    from ragtune.finetune.data import open_retriever
    from ragtune.system import build

    with build(settings, embedder=embedder, generator=False) as system:
        system.ingestor.ingest_paths([sample_dir])
    question = "What is the default chunk overlap in characters?"
    config = make_config(index=str(settings.data_dir))
    with open_retriever(config) as retrieve:
        [built] = build_rag_examples([QAExample(question, "200")], retrieve, top_k=3)
    assert len(built.hits) == 3 and all(h.source.startswith(str(sample_dir)) for h in built.hits)
    # no gold context: the first retrieved chunk that holds the answer is cited
    first = next(n for n, h in enumerate(built.hits, start=1) if "200" in h.text)
    assert built.cited == (first,) and built.target == f"200 [{first}]."
