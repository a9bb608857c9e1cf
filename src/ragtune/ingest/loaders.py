"""Turn a file's bytes into text sections (page and heading kept), whatever its format.

The format is decided by the content (magic bytes, zip members, markup), not only by the
file name, and every way a file can be unusable raises `LoaderError` with a message a
person can act on. The formats themselves are in `ragtune.ingest.formats`.

    >>> from ragtune.ingest.loaders import load_bytes
    >>> doc = load_bytes(b"# Setup\\nRun make demo.", "notes.md")
    >>> doc.content_type, doc.sections[0].heading, doc.sections[0].text
    ('text/markdown', 'Setup', 'Run make demo.')
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from ragtune.ingest.formats import (
    FORMATS,
    HTML,
    MARKDOWN,
    TEXT,
    Format,
    Limits,
    LoaderError,
    bom_encoding,
    chars_error,
    decode_text,
    format_by_name,
    supported_names,
    zip_kinds,
)
from ragtune.ingest.frontmatter import split_front_matter
from ragtune.types import LoadedDocument, MetaValue

_SNIFF_BYTES = 8192


def detect_format(data: bytes, filename: str) -> Format:
    """The document's format from its bytes; the extension, which must be a supported one
    (`format_by_name`), only separates text dialects."""
    name = Path(filename).name
    named = format_by_name(filename)
    if not data.strip():
        raise LoaderError(f"{name} is empty: there is no text to index", "empty_file")
    for fmt in FORMATS:
        if fmt.magic and data.startswith(fmt.magic):
            return fmt
    if data.startswith(b"PK\x03\x04"):
        return _zip_format(data, name)
    if named.binary:
        raise LoaderError(f"{name} is named {Path(filename).suffix} but {named.misnamed}", "unsupported_type")
    encoding = bom_encoding(data)
    if encoding is not None:  # UTF-16/32 text: its NUL bytes are no sign of a binary file
        head = data[:_SNIFF_BYTES].decode(encoding, errors="ignore").encode("utf-8", errors="ignore")
        return _text_format(named, head)
    head = data[:_SNIFF_BYTES]
    control = sum(1 for b in head if b < 9 or 13 < b < 32)
    if b"\x00" in head or control > len(head) * 0.05:
        raise LoaderError(
            f"{name} looks like a binary file, not text; supported types are {supported_names()}", "unsupported_type"
        )
    return _text_format(named, head)


def _text_format(named: Format, head: bytes) -> Format:
    if named is not TEXT:  # a text dialect: the name decides
        return named
    if head[:1024].lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return HTML
    return TEXT


def _zip_format(data: bytes, name: str) -> Format:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = set(archive.namelist())
    except zipfile.BadZipFile as exc:
        raise LoaderError(f"{name} is a damaged zip archive ({exc})", "unsupported_type") from exc
    for fmt in FORMATS:
        if fmt.zip_member and fmt.zip_member in members:
            return fmt
    raise LoaderError(f"{name} is a zip archive but not a {zip_kinds()}; unpack it first", "unsupported_type")


def load_bytes(data: bytes, source: str, limits: Limits | None = None) -> LoadedDocument:
    name = Path(source).name
    limits = limits or Limits()
    fmt = detect_format(data, source)
    metadata: dict[str, MetaValue] = {}
    if fmt is MARKDOWN:
        text, metadata = split_front_matter(decode_text(data, name), name)
        data = text.encode("utf-8")
    try:
        title, sections = fmt.load(data, name, limits)
    except RecursionError as exc:  # a parser recursing per nesting level: this document's problem only
        raise LoaderError(
            f"{name} nests too deeply to parse (limit {limits.max_nesting_depth}, RAGTUNE_MAX_NESTING_DEPTH)",
            "nesting_limit",
        ) from exc
    sections = [s for s in sections if s.text]
    if sum(len(s.text) + len(s.heading) for s in sections) > limits.max_extracted_chars:
        raise chars_error(name, limits)
    if not sections:
        raise LoaderError(f"{name} contains no text to index", "no_text")
    return LoadedDocument(source, fmt.content_type, title or Path(source).stem, sections, metadata)
