"""The label-free faithfulness check: answer sentences against the chunks they cite, lexically by default
and by a local NLI cross-encoder when one is configured (a tiny one built here from a config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.config import EvalSettings
from ragtune.eval.faithfulness import (
    CrossEncoderSupport,
    FaithfulnessModelError,
    LexicalSupport,
    answer_faithfulness,
    cited_sentences,
    support_check,
)
from ragtune.types import Answer, Citation
from tests.builders import bert_word_tokenizer

MILVUS = "Milvus was created by Zilliz in 2019. The server listens on port 19530."
KITCHEN = "The office kitchen opens at seven and closes at six."


def _answer(text: str, *snippets: str) -> Answer:
    citations = [Citation(n, f"c{n}", f"d{n}", "/x.md", "x", 0, "", s, 1.0) for n, s in enumerate(snippets, start=1)]
    return Answer("q", text, citations, False, [], {})


def test_sentences_are_checked_against_the_chunks_they_cite_markers_stripped():
    assert cited_sentences("Zilliz made Milvus [1]. It listens on 19530. [2] Yes [2].") == [
        ("Zilliz made Milvus.", (1,)),
        ("It listens on 19530.", (2,)),  # the marker opening the next sentence closes this one
        ("Yes.", (2,)),
    ]
    # a sentence without a marker takes the next one's, or else the last one's; none at all: nothing cited
    assert cited_sentences("Milvus is a database. Zilliz made it [1].") == [
        ("Milvus is a database.", (1,)),
        ("Zilliz made it.", (1,)),
    ]
    assert cited_sentences("Zilliz made it [2][1]. Since 2019.") == [
        ("Zilliz made it.", (2, 1)),
        ("Since 2019.", (2, 1)),
    ]
    assert cited_sentences("No citation here.") == [("No citation here.", ())]


def test_the_lexical_check_takes_quotes_and_paraphrases_and_refuses_swapped_facts():
    check = LexicalSupport(threshold=0.6)
    assert check.share("Milvus was created by Zilliz in 2019.", [MILVUS]) == 1.0
    assert check.supported("Zilliz created Milvus.", [MILVUS])  # stems: "created" meets "created", 3 of 3
    assert check.supported("Zilliz built Milvus.", [MILVUS])  # 2 of 3
    assert not check.supported("Google created Milvus in 2015.", [MILVUS])  # 2 of 4
    assert not check.supported("Zilliz created Milvus.", [KITCHEN])  # the right fact, the wrong chunk cited
    assert not check.supported("Zilliz created Milvus.", [])  # cites nothing
    with pytest.raises(ValueError, match="threshold"):
        LexicalSupport(threshold=0.0)


def test_an_answer_counts_its_supported_sentences_and_skips_those_without_content_words():
    answer = _answer(
        "Zilliz created Milvus [1]. It opens at seven [2]. Google built it in 2015 [1]. It is so [1].", MILVUS, KITCHEN
    )
    faithfulness = answer_faithfulness(answer, LexicalSupport())
    assert (faithfulness.supported, faithfulness.sentences) == (2, 3)


def _tiny_nli(directory: Path, entailment_bias: float) -> Path:
    """A one-layer BERT NLI classifier whose output is its bias alone: always entailment, or never."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = bert_word_tokenizer(["milvus", "zilliz"])
    labels = {0: "contradiction", 1: "entailment", 2: "neutral"}
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, entailment_bias, 0.0]))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_local_nli_model_supports_a_sentence_when_entailment_is_its_most_likely_label(tmp_path):
    always = support_check(EvalSettings(faithfulness_model=str(_tiny_nli(tmp_path / "yes", 5.0))))
    never = CrossEncoderSupport(str(_tiny_nli(tmp_path / "no", -5.0)))
    assert isinstance(always, CrossEncoderSupport) and always.name == f"model:{tmp_path / 'yes'}"
    answer = _answer("Zilliz created Milvus [1]. Google built it [1].", MILVUS)
    assert answer_faithfulness(answer, always).supported == 2
    assert answer_faithfulness(answer, never).supported == 0
    assert not always.supported("Zilliz created Milvus.", [])  # nothing cited, nothing to entail it
    assert isinstance(support_check(EvalSettings()), LexicalSupport)


def test_a_faithfulness_model_that_is_not_one_is_refused_with_the_setting_named(tmp_path):
    with pytest.raises(FaithfulnessModelError, match=r"RAGTUNE_FAITHFULNESS_MODEL .* is not a directory"):
        CrossEncoderSupport(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FaithfulnessModelError, match="does not load as a cross-encoder"):
        CrossEncoderSupport(str(tmp_path / "empty"))
