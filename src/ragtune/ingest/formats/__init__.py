"""The registry of document formats: the one list that the loaders, the upload checks, the
API's messages and the web UI's file picker read. A new format is one module here that
defines its `Format`, plus one line in `FORMATS`.

    >>> from ragtune.ingest.formats import FORMATS, supported_names, accept_attribute
    >>> supported_names()
    'txt, md, html, pdf, docx, pptx, xlsx, csv, png, jpeg and tiff'
    >>> accept_attribute()
    '.txt,.text,.md,.markdown,.html,.htm,.pdf,.docx,.pptx,.xlsx,.csv,.png,.jpg,.jpeg,.tif,.tiff'
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ragtune.ingest.formats.base import Format, Limits, LoaderError, bom_encoding, chars_error, decode_text
from ragtune.ingest.formats.csvfile import CSV
from ragtune.ingest.formats.docx import DOCX
from ragtune.ingest.formats.html import HTML, MARKDOWN
from ragtune.ingest.formats.image import JPEG, PNG, TIFF
from ragtune.ingest.formats.pdf import PDF
from ragtune.ingest.formats.pptx import PPTX
from ragtune.ingest.formats.text import TEXT
from ragtune.ingest.formats.xlsx import XLSX

FORMATS: tuple[Format, ...] = (TEXT, MARKDOWN, HTML, PDF, DOCX, PPTX, XLSX, CSV, PNG, JPEG, TIFF)

SUPPORTED_EXTENSIONS = frozenset(ext for fmt in FORMATS for ext in fmt.extensions)

__all__ = [
    "CSV",
    "DOCX",
    "FORMATS",
    "HTML",
    "JPEG",
    "MARKDOWN",
    "PDF",
    "PNG",
    "PPTX",
    "SUPPORTED_EXTENSIONS",
    "TEXT",
    "TIFF",
    "XLSX",
    "Format",
    "Limits",
    "LoaderError",
    "accept_attribute",
    "bom_encoding",
    "by_content_type",
    "by_extension",
    "chars_error",
    "decode_text",
    "format_by_name",
    "has_supported_name",
    "supported_names",
    "zip_kinds",
]


def by_content_type(content_type: str) -> Format:
    return next(fmt for fmt in FORMATS if fmt.content_type == content_type)


def by_extension(suffix: str) -> Format | None:
    return next((fmt for fmt in FORMATS if suffix.lower() in fmt.extensions), None)


def _suffix(filename: str) -> str:
    return PurePosixPath(filename.replace("\\", "/")).suffix


def has_supported_name(filename: str) -> bool:
    return by_extension(_suffix(filename)) is not None


def format_by_name(filename: str) -> Format:
    """The format the name's extension says; LoaderError unless it is a supported one.

    One rule for a folder's walk, a file named on the command line and an HTTP upload:
    the name says the file is meant as a document, and its bytes then decide which
    supported format it is (`ragtune.ingest.loaders.detect_format`; a PDF named
    ``.txt`` is read as a PDF). Without it, a folder walk would have to read every file
    to find out, and a ``notes.exe`` would be indexed by one path and not the other.
    """
    named = by_extension(_suffix(filename))
    if named is not None:
        return named
    path = PurePosixPath(filename.replace("\\", "/"))
    said = f"is named {path.suffix}" if path.suffix else "has no file extension"
    raise LoaderError(
        f"{path.name} {said}, not a supported type; name it for its format ({accept_attribute().replace(',', ', ')})",
        "unsupported_type",
    )


def supported_names() -> str:
    """'txt, md, …, png, jpeg and tiff', for messages."""
    return _listed([fmt.name for fmt in FORMATS], "and")


def zip_kinds() -> str:
    """What the zip-based formats are called, for a zip archive that is none of them."""
    return _listed([fmt.label or fmt.name for fmt in FORMATS if fmt.zip_member], "or")


def _listed(names: list[str], conjunction: str) -> str:
    return f"{', '.join(names[:-1])} {conjunction} {names[-1]}" if len(names) > 1 else names[0]


def accept_attribute() -> str:
    """The extensions for an HTML file input's ``accept`` attribute."""
    return ",".join(ext for fmt in FORMATS for ext in fmt.extensions)
