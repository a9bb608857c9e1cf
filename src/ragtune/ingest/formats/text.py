"""Plain text: one section, whitespace normalised."""

from __future__ import annotations

from ragtune.ingest.formats.base import Format, Limits, check_text, decode_text, normalise
from ragtune.types import Section


def load_text(data: bytes, name: str, limits: Limits) -> tuple[str, list[Section]]:
    return "", [Section(normalise(decode_text(data, name)))]


TEXT = Format("txt", "text/plain", (".txt", ".text"), load_text, check_text)
