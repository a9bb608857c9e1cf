"""Which generator answers: one factory per RAGTUNE_GENERATOR name.

A new backend is its own module plus one line here (and its name in
`ragtune.config.GeneratorName`). LLM backends are imported inside their factory, so
loading a model is only paid for by those who configure one.

    >>> from ragtune.config import GENERATORS
    >>> from ragtune.generate.registry import FACTORIES
    >>> sorted(FACTORIES) == sorted(GENERATORS)
    True
"""

from __future__ import annotations

from collections.abc import Callable

from ragtune.config import GeneratorName, Settings
from ragtune.embed import Embedder
from ragtune.generate.base import Generator
from ragtune.generate.extractive import ExtractiveAnswerer


def _extractive(settings: Settings, embedder: Embedder) -> Generator:
    return ExtractiveAnswerer(embedder, settings.answer.min_relevance, settings.answer.sentences)


def _openai(settings: Settings, embedder: Embedder) -> Generator:
    from ragtune.generate.openai_compat import OpenAICompatGenerator

    return OpenAICompatGenerator.from_settings(settings.llm)


def _local(settings: Settings, embedder: Embedder) -> Generator:
    from ragtune.generate.local import LocalGenerator

    return LocalGenerator.from_settings(settings.llm)


FACTORIES: dict[GeneratorName, Callable[[Settings, Embedder], Generator]] = {
    "extractive": _extractive,
    "openai": _openai,
    "local": _local,
}


def build_generator(settings: Settings, embedder: Embedder) -> Generator:
    """The generator named by ``settings.answer.generator`` (RAGTUNE_GENERATOR)."""
    return FACTORIES[settings.answer.generator](settings, embedder)
