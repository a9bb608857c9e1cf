"""An index of six short documents on unrelated subjects, and the question set `synthesize` makes from it,
built once for the tests of this package (they only read them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import THREADS
from ragtune.config import Settings
from ragtune.eval.index import open_index
from ragtune.system import build
from ragtune.tune.dataset import write_synthesis
from ragtune.tune.synth import RuleWriter, Synthesis, SynthOptions, synthesize

# Subjects far apart, so a question about one document has no answer in the others; Milvus' port
# also numbers a kitchen locker (the LLM round-trip test), and milvus.md is two chunks long.
DOCUMENTS = {
    "milvus.md": (
        "# Milvus server\n\nThe Milvus server listens on port 19530 by default. Milvus was created by Zilliz in "
        "2019 and is maintained by the LF AI and Data Foundation. A server address such as "
        "http://localhost:19530 selects a Milvus server instead of Milvus Lite.\n\nMilvus Lite keeps a whole "
        "collection in a single local file. One process at a time may open that file, so tests and laptops "
        "use it while clusters run the server.\n"
    ),
    "kitchen.md": (
        "# Kitchen rules\n\nThe office kitchen opens at seven in the morning and closes at six in the evening. "
        "Locker 19530 in the basement holds the spare keys for the kitchen. Clean the coffee machine every "
        "Friday afternoon before you leave.\n"
    ),
    "etna.md": (
        "# Mount Etna\n\nMount Etna is an active volcano on the east coast of Sicily. Its summit rises about "
        "3300 metres above the sea. The eruption of 1669 destroyed large parts of the city of Catania.\n"
    ),
    "football.md": (
        "# The village football club\n\nThe village football club was founded in 1898 by railway workers. "
        "Its ground holds 4000 spectators on match days. The team plays in green shirts and white shorts.\n"
    ),
    "violin.md": (
        "# Learning the violin\n\nA beginner practises scales for twenty minutes before every lesson. The bow is "
        "rubbed with rosin so that it grips the strings. Most students move to a full-size violin at the age of 11.\n"
    ),
    "cartax.md": (
        "# Company car tax\n\nA company car is taxed as a benefit in kind on the monthly payslip. The rate "
        "depends on the carbon emissions of the car in grams per kilometre. Electric cars were taxed at 2 percent "
        "of their list price in 2024.\n"
    ),
}
CHUNKING = {"chunk_size": 300, "chunk_overlap": 50}
OPTIONS = SynthOptions(per_chunk=2, unanswerable=0.5, holdout=0.34, seed=0)


@pytest.fixture(scope="package")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tune") / "docs"
    directory.mkdir()
    for name, text in DOCUMENTS.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


@pytest.fixture(scope="package")
def index_settings(tmp_path_factory: pytest.TempPathFactory, corpus: Path, embedder: Any) -> Settings:
    """The live index of `corpus`, as `ragtune ingest` makes it."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("index") / "data", torch_threads=THREADS, **CHUNKING)
    with build(settings, embedder=embedder) as system:
        report = system.ingestor.ingest_paths([corpus])
    assert len(report.indexed) == len(DOCUMENTS), report.failed
    return settings


@pytest.fixture(scope="package")
def question_set(
    tmp_path_factory: pytest.TempPathFactory, index_settings: Settings, embedder: Any
) -> tuple[Path, dict[str, Any], Synthesis]:
    """The rules' question set about the index, written to disk: (folder, manifest, synthesis)."""
    out = tmp_path_factory.mktemp("sets") / "questions"
    with open_index(index_settings, embedder) as system:
        synthesis = synthesize(system, RuleWriter(), OPTIONS, log=lambda message: None)
    return out, write_synthesis(synthesis, out, {"writer": "rules"}), synthesis
