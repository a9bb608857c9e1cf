"""PDF with pypdf: one section per page (page numbers kept), the metadata title unless it is a file name."""

from __future__ import annotations

import io
from typing import Any

from ragtune.ingest.formats.base import Format, Limits, LoaderError, chars_error, metadata_title, normalise
from ragtune.types import Section


def _encrypted(name: str) -> LoaderError:
    return LoaderError(
        f"{name} is an encrypted PDF; upload a decrypted copy (e.g. `qpdf --decrypt in.pdf out.pdf`)", "encrypted_pdf"
    )


def _unreadable(name: str, exc: Exception) -> LoaderError:
    if "decrypt" in str(exc).lower() or "crypt" in type(exc).__name__.lower():
        return _encrypted(name)
    return LoaderError(
        f"{name} is a damaged or truncated PDF ({type(exc).__name__}: {exc}); re-export it", "damaged_pdf"
    )


def _open(data: bytes, name: str, limits: Limits) -> Any:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise _encrypted(name)
        pages = len(reader.pages)
        if pages == 0:
            raise LoaderError(f"{name} has no pages", "empty_pdf")
        if pages > limits.max_pages:
            raise LoaderError(
                f"{name} has {pages} pages, over the limit of {limits.max_pages} (RAGTUNE_MAX_PAGES)", "page_limit"
            )
    except LoaderError:
        raise
    except Exception as exc:  # pypdf raises many kinds on hostile files; none may escape as a crash
        raise _unreadable(name, exc) from exc
    return reader


def check_pdf(data: bytes, name: str, limits: Limits) -> None:
    """Opens the structure (encryption, page tree) without extracting text."""
    _open(data, name, limits)


def load_pdf(data: bytes, name: str, limits: Limits) -> tuple[str, list[Section]]:
    reader = _open(data, name, limits)
    sections: list[Section] = []
    extracted = 0
    try:
        for i, page in enumerate(reader.pages, start=1):
            sections.append(Section(normalise(page.extract_text() or ""), page=i))
            extracted += len(sections[-1].text)
            if extracted > limits.max_extracted_chars:
                raise chars_error(name, limits)
        title = metadata_title((reader.metadata or {}).get("/Title"))
    except LoaderError:
        raise
    except Exception as exc:  # as in _open: a hostile page is a per-document error
        raise _unreadable(name, exc) from exc
    if not any(s.text for s in sections):
        raise LoaderError(f"{name} has no extractable text (a scanned PDF?); run OCR on it first", "no_text")
    return title, sections


PDF = Format(
    "pdf",
    "application/pdf",
    (".pdf",),
    load_pdf,
    check_pdf,
    magic=b"%PDF-",
    misnamed="does not start with %PDF-: not a PDF, or truncated",
)
