import pytest

from ragtune.generate.base import NOT_FOUND, Generation, renumber_citations, resolve_citations
from ragtune.generate.extractive import ExtractiveAnswerer, split_sentences
from ragtune.types import Hit


def _hit(i: int, text: str) -> Hit:
    return Hit(f"c{i}", f"d{i}", text, f"/docs/{i}.md", "T", i, "H", (), 1.0 / (i + 1))


HITS = [
    _hit(0, "The Rhine flows through Switzerland. It is a major European river."),
    _hit(1, "Milvus is a vector database. It was created by Zilliz in 2019 and is open source."),
]


def test_split_sentences_respects_abbreviations_and_initials():
    assert split_sentences("Dr. Smith met J. Doe. They talked e.g. about rivers! Then left.") == [
        "Dr. Smith met J. Doe.",
        "They talked e.g. about rivers!",
        "Then left.",
    ]


def test_heading_lines_stand_alone():
    text = "Operations guide\nBackups\nBack up the data directory while ragtune is\nstopped. It holds the catalog."
    assert split_sentences(text) == [
        "Operations guide",
        "Backups",
        "Back up the data directory while ragtune is stopped.",
        "It holds the catalog.",
    ]


def test_quotes_the_best_sentence_with_its_citation(embedder):
    generation = ExtractiveAnswerer(embedder).generate("Who created Milvus?", HITS)
    # The quote opens with "It": its antecedent sentence comes along.
    assert generation.text == "Milvus is a vector database. It was created by Zilliz in 2019 and is open source. [2]"
    assert not generation.abstained


def test_abstains_when_nothing_is_relevant(embedder):
    generation = ExtractiveAnswerer(embedder, min_relevance=0.25).generate("What is the recipe for banana bread?", HITS)
    assert generation.abstained and generation.text == NOT_FOUND


def test_lexical_only_mode_without_embedder():
    generation = ExtractiveAnswerer(None, min_relevance=0.1).generate(
        "Which countries does the Rhine flow through?", HITS
    )
    assert generation.text.endswith("[1]") and "Switzerland" in generation.text


def test_several_sentences_in_reading_order(embedder):
    generation = ExtractiveAnswerer(embedder, max_sentences=2).generate(
        "Milvus vector database created by Zilliz", HITS
    )
    assert (
        generation.text == "Milvus is a vector database. [2] It was created by Zilliz in 2019 and is open source. [2]"
    )


def test_citations_are_validated_and_renumbered():
    text, citations = resolve_citations(Generation("A [2]. B [7] [1]. C [2]."), HITS)
    assert text == "A [1]. B [2]. C [1]."
    assert [(c.number, c.chunk_id, c.source) for c in citations] == [(1, "c1", "/docs/1.md"), (2, "c0", "/docs/0.md")]


@pytest.mark.parametrize(
    ("text", "expected"), [("x [0] y", "x y"), ("[1][1] z", "[1] z"), ("no markers", "no markers")]
)
def test_renumber_edge_cases(text, expected):
    assert " ".join(renumber_citations(text, 2)[0].split()) == expected


def test_invalid_answerer_arguments():
    with pytest.raises(ValueError, match="max_sentences must be greater than 0; got 0"):
        ExtractiveAnswerer(None, max_sentences=0)


def test_a_heading_that_matches_best_is_not_quoted_as_the_answer(embedder):
    hit = _hit(0, "Operations guide\nBackups\nCopy the data directory to another disk every night.")
    answer = ExtractiveAnswerer(embedder).generate("What does it say about backups?", [hit])
    assert answer.text == "Copy the data directory to another disk every night. [1]" and not answer.abstained
    # With nothing but headings, the best one is still quoted rather than no answer.
    only_headings = ExtractiveAnswerer(embedder).generate("backups", [_hit(0, "Backups\nRestores")])
    assert only_headings.text == "Backups [1]"
