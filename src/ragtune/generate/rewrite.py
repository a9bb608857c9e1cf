"""Query rewriting before retrieval: follow-ups made standalone, and paraphrases for multi-query search.

A follow-up ("When was it founded?") searched verbatim finds nothing about "it". A
`Condenser` rewrites it into a standalone question from the conversation so far:

* `LlmCondenser` (when an LLM backend answers) asks the LLM with one short prompt, kept in
  the answer's debug info;
* `RuleCondenser` (the extractive default, no model) resolves references by rules:
  the first personal pronoun is replaced by what it most likely names, and an elliptical
  follow-up ("And in 2023?", "What about Kenya?", a fragment of at most four words) is
  appended to the previous standalone question. "it", "its", "they", "them", "their" name
  the conversation's topic: the title of the chunks the last answer cited most (their
  heading when the title is a file name), or, when nothing was cited, the longest
  capitalised name in the previous question. "he", "him", "his", "she", "her" name a
  person: that capitalised name first, the topic when there is none. A question with
  neither signal is taken as a new, standalone one.

    >>> from ragtune.types import Turn
    >>> rules = RuleCondenser()
    >>> rules.condense("When was it founded?", [Turn("Who runs Acme?", "Jo [1].", cited_titles=("Acme Corp",))]).question
    'When was Acme Corp founded?'
    >>> rules.condense("And in 2023?", [Turn("What was Acme's revenue in 2022?", "...")]).question
    "What was Acme's revenue in 2022, and in 2023?"
    >>> rules.condense("What is BM25?", [Turn("Who runs Acme?", "Jo [1].")]).question
    'What is BM25?'
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ragtune.generate.base import ChatModel, is_refusal
from ragtune.ingest.formats.base import metadata_title
from ragtune.types import Turn

log = logging.getLogger("ragtune.generate")

_WORD = re.compile(r"[A-Za-z][\w'-]*")
_SUBJECT_OBJECT = {"it", "they", "them", "he", "him", "she"}
_POSSESSIVE = {"its", "their", "his"}
_PERSONAL = {"he", "him", "his", "she", "her"}
# Words after "her" that make it an object ("about her?", "her in 1990"), not a possessive.
_NOT_A_NOUN = {
    "in", "on", "at", "to", "for", "from", "with", "by", "of", "about", "as", "and", "or", "when", "after", "before",
}  # fmt: skip
_QUESTION_WORDS = {"what", "who", "whom", "whose", "when", "where", "why", "which", "how", "is", "are", "was", "were",
                   "do", "does", "did", "can", "could", "should", "would", "will", "has", "have", "had"}  # fmt: skip
# A short question that starts with one of these is a request of its own, not a fragment.
_IMPERATIVES = {"explain", "summarize", "summarise", "list", "tell", "show", "describe", "define", "compare", "give",
                "find", "thanks", "thank", "ok", "okay", "yes", "no", "hi", "hello", "please"}  # fmt: skip
# "it" before these is no reference ("is it possible to", "does it take long"): left as it is.
_EXPLETIVE_NEXT = {"possible", "necessary", "true", "important", "safe", "ok", "okay", "better", "worth", "likely",
                   "hard", "easy", "required", "recommended", "needed", "allowed", "take", "takes", "took", "seem",
                   "seems", "matter", "matters", "mean", "means"}  # fmt: skip
_ELLIPSIS_LEAD = re.compile(r"^\s*(?:(?:and|but|also|so|then)\b[\s,]*|(?:what|how)\s+about\b\s*)", re.IGNORECASE)
_CONNECTORS = {"of", "upon", "the", "de", "and", "for"}  # inside names: "Newcastle upon Tyne"


@dataclass(frozen=True)
class Rewrite:
    question: str  # what is searched and answered
    debug: dict[str, Any] = field(default_factory=dict)


class Condenser(Protocol):
    """Rewrites a follow-up into a standalone question, given the turns before it (oldest first)."""

    name: str

    def condense(self, question: str, history: Sequence[Turn]) -> Rewrite: ...


def conversation_topic(history: Sequence[Turn]) -> str:
    """What the conversation is about, by the rule in the module docstring ("" if nothing)."""
    for turn in reversed(history):
        # A title that is a file name ("notes.txt") says nothing of the subject: its heading may.
        headings = turn.cited_headings or ("",) * len(turn.cited_titles)
        names = [
            metadata_title(title) or metadata_title(heading) for title, heading in zip(turn.cited_titles, headings)
        ]
        names = [n for n in names if n]
        if names:
            return Counter(names).most_common(1)[0][0]
        person = conversation_person([turn])
        if person:
            return person
    return ""


def conversation_person(history: Sequence[Turn]) -> str:
    """The longest capitalised name in the latest question that has one ("" if none)."""
    for turn in reversed(history):
        named = _names(turn.searched)
        if named:
            return max(named, key=len)
    return ""


def _names(question: str) -> list[str]:
    """Runs of capitalised words in `question` (joined by "of", "upon", …); a leading question
    word or imperative ("Explain the Reformation") is not part of a name."""
    words = _WORD.findall(question)
    if words and words[0].lower() in _QUESTION_WORDS | _IMPERATIVES:
        words = words[1:]
    names: list[str] = []
    run: list[str] = []
    for word in [*words, ""]:
        if word[:1].isupper() or (run and word in _CONNECTORS):
            run.append(word)
            continue
        while run and not run[-1][:1].isupper():
            run.pop()
        if run:
            names.append(" ".join(run).removesuffix("'s"))
        run = []
    return names


def _resolve_pronoun(question: str, topic: str, person: str) -> str | None:
    """`question` with its first personal pronoun replaced by `person` (he, she, …) or
    `topic` (it, they, …), either standing in when the other is empty; None when it has none."""
    words = list(_WORD.finditer(question))
    for n, match in enumerate(words):
        word = match.group(0).lower()
        name = (person or topic) if word in _PERSONAL else (topic or person)
        following = words[n + 1].group(0).lower() if n + 1 < len(words) else ""
        after = words[n + 2].group(0).lower() if n + 2 < len(words) else ""
        if not name or word not in _SUBJECT_OBJECT | _POSSESSIVE | _PERSONAL:
            continue
        if word == "it" and (following in _EXPLETIVE_NEXT or (following in {"is", "was"} and after in _EXPLETIVE_NEXT)):
            continue
        possessive = word in _POSSESSIVE or (word == "her" and bool(following) and following not in _NOT_A_NOUN)
        replacement = f"{name}'s" if possessive else name
        return question[: match.start()] + replacement + question[match.end() :]
    return None


def _elliptical(question: str) -> str | None:
    """The fragment of an elliptical follow-up ("And in 2023?" -> "in 2023"); None if it is not one."""
    lead = _ELLIPSIS_LEAD.match(question)
    fragment = question[lead.end() :] if lead and lead.end() else question
    fragment = fragment.strip().rstrip("?.! ").strip()
    words = _WORD.findall(fragment)
    starts_as_request = bool(words) and words[0].lower() in _QUESTION_WORDS | _IMPERATIVES
    if fragment and ((lead and lead.end()) or (len(words) <= 4 and not starts_as_request)):
        return fragment
    return None


class RuleCondenser:
    """Follow-ups made standalone by the rules in the module docstring; no model."""

    name = "rules"

    def condense(self, question: str, history: Sequence[Turn]) -> Rewrite:
        if not history:
            return Rewrite(question)
        topic, person = conversation_topic(history), conversation_person(history)
        previous = history[-1].searched.strip().rstrip("?.! ")
        fragment = _elliptical(question)
        if fragment is not None:
            fragment = _resolve_pronoun(fragment, topic, person) or fragment
            rewritten = f"{previous}, and {fragment}?"
        else:
            resolved = _resolve_pronoun(question, topic, person)
            if resolved is None:
                return Rewrite(question, {"condenser": self.name, "rule": "standalone"})
            rewritten = resolved
        rule = "ellipsis" if fragment is not None else "pronoun"
        return Rewrite(rewritten, {"condenser": self.name, "rule": rule, "topic": topic, "person": person})


CONDENSE_PROMPT = (
    "Rewrite the user's last question as one standalone question that can be understood without "
    "the conversation: replace pronouns and references with what they refer to, and keep "
    "everything else. Do not answer it. Reply with the question only."
)
_MAX_TURNS, _MAX_ANSWER_CHARS = 3, 300
_LEADING_LABEL = re.compile(r"^\s*(?:standalone question|question|rewritten)\s*:\s*", re.IGNORECASE)


_STOP_WORDS = _QUESTION_WORDS | _SUBJECT_OBJECT | _POSSESSIVE | _PERSONAL | _NOT_A_NOUN | {
    "the", "a", "an", "this", "that", "these", "those", "there", "what's", "it's",
}  # fmt: skip
_KEPT_WORDS = 0.6  # share of the follow-up's content words a usable rewrite keeps


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)} - _STOP_WORDS


def usable_rewrite(rewritten: str, question: str) -> bool:
    """Whether an LLM's rewrite is the follow-up made standalone: a question of reasonable length
    that keeps most of the follow-up's content words (small models answer or describe instead)."""
    if is_refusal(rewritten) or len(rewritten) > 2 * len(question) + 200:  # empty, a refusal, or runs on
        return False
    if question.rstrip().endswith("?") and not rewritten.rstrip().endswith("?"):
        return False
    asked = _content_words(question)
    return not asked or len(asked & _content_words(rewritten)) >= _KEPT_WORDS * len(asked)


def _one_line(text: str) -> str:
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    return _LEADING_LABEL.sub("", line).strip().strip('"“”').strip()


class LlmCondenser:
    """Follow-ups made standalone by the LLM that answers (one short prompt); by rules when its
    reply is not a usable rewrite (`usable_rewrite`)."""

    name = "llm"

    def __init__(self, model: ChatModel, max_new_tokens: int = 64) -> None:
        self.model, self.max_new_tokens = model, max_new_tokens
        self.fallback = RuleCondenser()

    def messages(self, question: str, history: Sequence[Turn]) -> list[dict[str, str]]:
        lines = []
        for turn in history[-_MAX_TURNS:]:
            lines.append(f"User: {turn.searched}")
            lines.append(f"Assistant: {turn.answer[:_MAX_ANSWER_CHARS]}")
        conversation = "\n".join(lines)
        return [
            {"role": "system", "content": CONDENSE_PROMPT},
            {"role": "user", "content": f"Conversation:\n{conversation}\n\nLast question: {question}"},
        ]

    def condense(self, question: str, history: Sequence[Turn]) -> Rewrite:
        if not history:
            return Rewrite(question)
        messages = self.messages(question, history)
        try:
            reply = self.model.complete(messages, self.max_new_tokens)
        except Exception as exc:  # rewriting is an aid: an LLM outage must not fail the question here
            log.warning("the LLM could not rewrite the follow-up, rules did: %s", exc)
            fallback = self.fallback.condense(question, history)
            return Rewrite(fallback.question, {"condenser": self.name, "error": str(exc), "fallback": fallback.debug})
        rewritten = _one_line(reply)
        debug: dict[str, Any] = {"condenser": self.name, "prompt": messages, "reply": reply}
        if not usable_rewrite(rewritten, question):
            fallback = self.fallback.condense(question, history)
            return Rewrite(fallback.question, {**debug, "fallback": fallback.debug})
        return Rewrite(rewritten, debug)


PARAPHRASE_PROMPT = (
    "Write {n} different ways to ask the user's question, for a search engine: same meaning, "
    "other words. One per line, no numbering, nothing else."
)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s*")


class Paraphraser:
    """Multi-query search: the LLM's rephrasings of a question, each searched and fused with it."""

    def __init__(self, model: ChatModel, count: int = 3, max_new_tokens: int = 128) -> None:
        if not 1 <= count <= 5:
            raise ValueError(f"count must be 1 to 5; got {count}")
        self.model, self.count, self.max_new_tokens = model, count, max_new_tokens

    def paraphrase(self, question: str) -> tuple[list[str], dict[str, Any]]:
        messages = [
            {"role": "system", "content": PARAPHRASE_PROMPT.format(n=self.count)},
            {"role": "user", "content": question},
        ]
        try:
            reply = self.model.complete(messages, self.max_new_tokens)
        except Exception as exc:  # as in LlmCondenser: the question is still searched, alone
            log.warning("the LLM could not write paraphrases: %s", exc)
            return [], {"paraphrase_prompt": messages, "paraphrases": [], "error": str(exc)}
        seen = {question.strip().lower()}
        paraphrases = []
        for line in reply.splitlines():
            text = _BULLET.sub("", line).strip().strip('"“”').strip()
            if text and text.lower() not in seen and len(text) <= 2 * len(question) + 200:
                seen.add(text.lower())
                paraphrases.append(text)
        return paraphrases[: self.count], {"paraphrase_prompt": messages, "paraphrases": paraphrases[: self.count]}
