"""Follow-ups made standalone (rules and LLM) and multi-query paraphrases."""

from __future__ import annotations

import pytest

from ragtune.generate.openai_compat import OpenAICompatGenerator
from ragtune.generate.rewrite import LlmCondenser, Paraphraser, RuleCondenser, conversation_topic
from ragtune.types import Turn
from tests.llm_stub import stub_llm

KENYA = [Turn("What is the largest city in Kenya?", "Nairobi is the largest city [1].", cited_titles=("Kenya",))]


@pytest.mark.parametrize(
    ("follow_up", "standalone"),
    [
        ("When did it gain independence?", "When did Kenya gain independence?"),
        ("What is its population?", "What is Kenya's population?"),
        ("Who governs them?", "Who governs Kenya?"),
        ("What did critics write about her?", "What did critics write about Kenya?"),
        ("Who was her first president?", "Who was Kenya's first president?"),
        ("And in 1963?", "What is the largest city in Kenya, and in 1963?"),
        ("What about its capital?", "What is the largest city in Kenya, and Kenya's capital?"),
        ("Mombasa?", "What is the largest city in Kenya, and Mombasa?"),
    ],
)
def test_rules_resolve_pronouns_and_ellipsis(follow_up, standalone):
    rewrite = RuleCondenser().condense(follow_up, KENYA)
    assert rewrite.question == standalone
    assert rewrite.debug["condenser"] == "rules" and rewrite.debug["topic"] == "Kenya"


@pytest.mark.parametrize(
    "question",
    [
        "What is the boiling point of nitrogen?",
        "How does hybrid search fuse rankings?",
        "Who wrote Hamlet?",
        "Thanks!",
        "Explain BM25",
        "Summarize the deployment guide",
        "Is it possible to reindex documents?",
        "How long does it take to index a folder?",
    ],
)
def test_rules_leave_a_standalone_question_alone(question):
    assert RuleCondenser().condense(question, KENYA).question == question
    assert RuleCondenser().condense(question, []).question == question


def test_topic_prefers_the_most_cited_title_then_a_heading_then_names_in_the_question():
    cited = Turn("q", "a", cited_titles=("Rhine", "Kenya", "Rhine"), cited_headings=("", "", ""))
    assert conversation_topic([cited]) == "Rhine"
    file_named = Turn("q", "a", cited_titles=("notes.txt",), cited_headings=("Backups",))
    assert conversation_topic([file_named]) == "Backups"
    uncited = Turn("Who founded the United Methodist Church in America?", "I could not find the answer.")
    assert conversation_topic([uncited]) == "United Methodist Church"
    # The latest turn that says anything wins over older ones.
    assert conversation_topic([cited, Turn("how so?", "no")]) == "Rhine"
    assert conversation_topic([]) == ""


def test_a_rewritten_turn_is_read_as_it_was_searched():
    earlier = Turn("When was it founded?", "In 1901 [1].", rewritten_question="When was Acme founded?")
    assert (
        RuleCondenser().condense("And in which city?", [earlier]).question
        == "When was Acme founded, and in which city?"
    )


def test_llm_condenser_sends_one_short_prompt_and_keeps_it_in_debug():
    with stub_llm(condensed='Standalone question: "When was Acme Corp founded?"') as stub:
        model = OpenAICompatGenerator(stub.url, model="stub-model", max_retries=0)
        rewrite = LlmCondenser(model).condense("When was it founded?", [Turn("Who runs Acme Corp?", "Jo [1].")])
        model.close()
    assert rewrite.question == "When was Acme Corp founded?"
    assert len(stub.requests) == 1 and stub.requests[0]["temperature"] == 0.0 and stub.requests[0]["max_tokens"] == 64
    sent = stub.requests[0]["messages"]
    assert "Who runs Acme Corp?" in sent[1]["content"] and sent[1]["content"].endswith("When was it founded?")
    assert rewrite.debug["prompt"] == sent and rewrite.debug["condenser"] == "llm"


@pytest.mark.parametrize(
    "reply",
    [
        "",  # nothing
        'The document "Kenya" contains the following documents:',  # describes instead of asking
        "Kenya became independent in 1963 [1].",  # answers instead of asking
        "What is the capital of Kenya?",  # a question, but not this one
        "Why? " * 60,  # runs on
    ],
)
def test_llm_condenser_falls_back_to_rules_on_an_unusable_reply(reply):
    with stub_llm(condensed=reply) as stub:
        model = OpenAICompatGenerator(stub.url, model="stub-model", max_retries=0)
        rewrite = LlmCondenser(model).condense("When did it gain independence?", KENYA)
        model.close()
    assert rewrite.question == "When did Kenya gain independence?" and rewrite.debug["fallback"]["condenser"] == "rules"


def test_paraphrases_are_cleaned_deduplicated_and_capped():
    reply = "1. How big is Nairobi?\n- What is Nairobi's size?\n\nhow big is nairobi?\nWhat is the largest city?\n4) x"
    with stub_llm(paraphrases=reply) as stub:
        model = OpenAICompatGenerator(stub.url, model="stub-model", max_retries=0)
        paraphrases, debug = Paraphraser(model, count=3).paraphrase("What is the largest city?")
        model.close()
    assert paraphrases == ["How big is Nairobi?", "What is Nairobi's size?", "x"]
    assert debug["paraphrases"] == paraphrases


def test_he_and_she_name_the_person_asked_about_it_names_the_topic():
    luther = [Turn("What did Martin Luther write in 1517?", "The theses [1].", cited_titles=("Reformation",))]
    assert RuleCondenser().condense("When was he born?", luther).question == "When was Martin Luther born?"
    assert RuleCondenser().condense("Where did his ideas spread?", luther).question == (
        "Where did Martin Luther's ideas spread?"
    )
    assert RuleCondenser().condense("When did it begin?", luther).question == "When did Reformation begin?"


def test_a_leading_imperative_or_question_word_is_no_part_of_a_name():
    explain = [Turn("Explain the Reformation", "It was a movement [1].")]
    assert RuleCondenser().condense("When did it start?", explain).question == "When did Reformation start?"
    tell = [Turn("Tell me about Martin Luther", "A monk.")]
    assert RuleCondenser().condense("Where was he born?", tell).question == "Where was Martin Luther born?"


class _DownLLM:
    def complete(self, messages, max_new_tokens):
        raise RuntimeError("connection refused")


def test_an_llm_outage_falls_back_to_rules_and_to_the_question_alone():
    rewrite = LlmCondenser(_DownLLM()).condense("When did it gain independence?", KENYA)
    assert rewrite.question == "When did Kenya gain independence?"
    assert "connection refused" in rewrite.debug["error"] and rewrite.debug["fallback"]["condenser"] == "rules"
    paraphrases, debug = Paraphraser(_DownLLM()).paraphrase("What is the largest city?")
    assert paraphrases == [] and "connection refused" in debug["error"]
