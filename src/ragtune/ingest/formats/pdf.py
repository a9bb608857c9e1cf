"""PDF: one section per page (page numbers kept), the metadata title unless it is a file name.

pypdf opens the structure (encryption, page count), cheaply enough for the upload check;
pdfplumber reads the text and finds ruled tables, which stay tables (Markdown rows, where they
stand on the page, their text not repeated as loose words); pages without a text layer are
rendered by pypdfium2 and read by Tesseract (`Limits.ocr`: ``auto`` reads the pages that have
no text but do have pictures, ``always`` every page instead of its text layer, ``off`` none).
"""

from __future__ import annotations

import io
import math
from typing import Any

from ragtune.ingest.formats.base import Format, Limits, LoaderError, chars_error, metadata_title, normalise
from ragtune.ingest.formats.ocr import page_limit, read_text
from ragtune.ingest.formats.tables import markdown_table
from ragtune.types import Section

OCR_DPI = 300  # Tesseract reads body text best at 300 dpi


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
    import pdfplumber

    reader = _open(data, name, limits)
    sections: list[Section] = []
    scanned: list[int] = []  # the indexes in `sections` of the pages to read by OCR
    extracted = 0
    try:
        title = metadata_title((reader.metadata or {}).get("/Title"))
        with pdfplumber.open(io.BytesIO(data)) as pdf:
            for page in pdf.pages:
                text = "" if limits.ocr == "always" else _page_text(page)
                if limits.ocr == "always" or (limits.ocr == "auto" and not text and page.images):
                    scanned.append(len(sections))
                sections.append(Section(text, page=page.page_number))
                page.close()  # pdfplumber keeps every page's parsed objects otherwise
                extracted += len(text)
                if extracted > limits.max_extracted_chars:
                    raise chars_error(name, limits)
        if scanned:
            _read_scanned(data, name, limits, sections, scanned)
    except LoaderError:
        raise
    except Exception as exc:  # as in _open: a hostile page is a per-document error
        raise _unreadable(name, exc) from exc
    if not any(s.text for s in sections):
        if scanned:
            raise LoaderError(f"{name} has no text: OCR found none on its {len(scanned)} scanned pages", "no_text")
        hint = " (or set RAGTUNE_OCR=auto)" if limits.ocr == "off" else ""
        raise LoaderError(f"{name} has no extractable text (a scanned PDF?); run OCR on it first{hint}", "no_text")
    return title, sections


def _page_text(page: Any) -> str:
    tables = page.find_tables()
    if not tables:
        return normalise(page.extract_text() or "")
    boxes = [table.bbox for table in tables]

    def outside_tables(obj: dict[str, Any]) -> bool:
        if obj.get("object_type") != "char":
            return True
        x, y = (obj["x0"] + obj["x1"]) / 2, (obj["top"] + obj["bottom"]) / 2
        return not any(x0 <= x <= x1 and top <= y <= bottom for x0, top, x1, bottom in boxes)

    # Lines and tables in reading order, top to bottom; a blank line around each table keeps
    # it one block for the chunker (and a Markdown table for a reader).
    blocks = [(line["top"], line["text"]) for line in page.filter(outside_tables).extract_text_lines()]
    blocks += [(table.bbox[1], f"\n{markdown_table(table.extract())}\n") for table in tables]
    return normalise("\n".join(text for _, text in sorted(blocks, key=lambda block: block[0])))


def _read_scanned(data: bytes, name: str, limits: Limits, sections: list[Section], scanned: list[int]) -> None:
    import pypdfium2

    if len(scanned) > limits.max_ocr_pages:
        raise page_limit(name, len(scanned), limits)
    has_text = any(s.text for s in sections)
    document = pypdfium2.PdfDocument(data)
    try:
        for index in scanned:
            page = document[index]
            width, height = page.get_size()
            # 300 dpi unless that is more pixels than a page may have (a poster-sized page)
            scale = min(OCR_DPI / 72, math.sqrt(limits.max_image_pixels / max(width * height, 1.0)))
            image = page.render(scale=scale, grayscale=True).to_pil()
            page.close()
            number = sections[index].page or index + 1
            try:
                text = read_text(image, name, number, limits)
            except LoaderError:
                # In auto mode a picture page beside text pages (a cover, a full-page figure)
                # is not worth the document: it is indexed without that page, as before OCR.
                if limits.ocr == "auto" and has_text:
                    continue
                raise
            sections[index] = Section(normalise(text), page=number)
    finally:
        document.close()


PDF = Format(
    "pdf",
    "application/pdf",
    (".pdf",),
    load_pdf,
    check_pdf,
    magic=(b"%PDF-",),
    misnamed="does not start with %PDF-: not a PDF, or truncated",
)
