"""Turn a file's bytes into text sections (page and heading kept), whatever its format.

The format is decided by the content (magic bytes, zip members, markup), not only by the
file name, and every way a file can be unusable raises `LoaderError` with a message a
person can act on.

    >>> from ragtune.ingest.loaders import load_bytes
    >>> doc = load_bytes(b"# Setup\\nRun make demo.", "notes.md")
    >>> doc.content_type, doc.sections[0].heading, doc.sections[0].text
    ('text/markdown', 'Setup', 'Run make demo.')
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import markdown
from bs4 import BeautifulSoup, NavigableString

from ragtune.types import LoadedDocument, Section

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
TEXT = "text/plain"

SUPPORTED_EXTENSIONS = frozenset({".txt", ".text", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx"})
_MARKDOWN_EXTENSIONS = {".md", ".markdown"}
_HTML_EXTENSIONS = {".html", ".htm"}
_SNIFF_BYTES = 8192


class LoaderError(ValueError):
    """The file cannot be turned into text; the message says why and what to do."""


def detect_content_type(data: bytes, filename: str) -> str:
    """The document type from the bytes; the extension only separates text dialects."""
    name = Path(filename).name
    suffix = Path(filename).suffix.lower()
    if not data.strip():
        raise LoaderError(f"{name} is empty: there is no text to index")
    if data.startswith(b"%PDF-"):
        return PDF
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = set(archive.namelist())
        except zipfile.BadZipFile as exc:
            raise LoaderError(f"{name} is a damaged zip/DOCX archive ({exc})") from exc
        if "word/document.xml" in members:
            return DOCX
        raise LoaderError(f"{name} is a zip archive but not a Word document; unpack it first")
    if suffix == ".pdf":
        raise LoaderError(f"{name} is named .pdf but does not start with %PDF-: not a PDF, or truncated")
    if suffix == ".docx":
        raise LoaderError(f"{name} is named .docx but is not a zip archive: not a Word document")
    head = data[:_SNIFF_BYTES]
    control = sum(1 for b in head if b < 9 or 13 < b < 32)
    if b"\x00" in head or control > len(head) * 0.05:
        raise LoaderError(f"{name} looks like a binary file, not text; supported types are txt, md, html, pdf and docx")
    if suffix in _MARKDOWN_EXTENSIONS:
        return MARKDOWN
    if suffix in _HTML_EXTENSIONS:
        return HTML
    lowered = head[:1024].lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return HTML
    return TEXT


def decode_text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoaderError(
            f"{name} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert it first, e.g. `iconv -f latin1 -t utf-8`"
        ) from exc


def load_bytes(data: bytes, source: str, max_uncompressed_bytes: int = 200 * 1024 * 1024) -> LoadedDocument:
    name = Path(source).name
    content_type = detect_content_type(data, source)
    if content_type == PDF:
        title, sections = _load_pdf(data, name)
    elif content_type == DOCX:
        title, sections = _load_docx(data, name, max_uncompressed_bytes)
    elif content_type == HTML:
        title, sections = _html_sections(decode_text(data, name))
    elif content_type == MARKDOWN:
        title, sections = _html_sections(
            markdown.markdown(decode_text(data, name), extensions=["tables", "fenced_code"])
        )
    else:
        title, sections = "", [Section(_normalise(decode_text(data, name)))]
    sections = [s for s in sections if s.text]
    if not sections:
        raise LoaderError(f"{name} contains no text to index")
    return LoadedDocument(source, content_type, title or Path(source).stem, sections)


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _load_pdf(data: bytes, name: str) -> tuple[str, list[Section]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoaderError(f"{name} is an encrypted PDF; index a decrypted copy")
        sections = [
            Section(_normalise(page.extract_text() or ""), page=i) for i, page in enumerate(reader.pages, start=1)
        ]
        title = str((reader.metadata or {}).get("/Title") or "")
    except LoaderError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError) as exc:
        raise LoaderError(f"{name} is a damaged or truncated PDF ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # pypdf raises many kinds on hostile files; none may escape as a crash
        if "decrypt" in str(exc).lower() or "crypt" in type(exc).__name__.lower():
            raise LoaderError(f"{name} is an encrypted PDF; index a decrypted copy") from exc
        raise LoaderError(f"{name} could not be read as a PDF ({type(exc).__name__}: {exc})") from exc
    if not any(s.text for s in sections):
        raise LoaderError(f"{name} has no extractable text (a scanned PDF?); run OCR on it first")
    return title, sections


def _load_docx(data: bytes, name: str, max_uncompressed_bytes: int) -> tuple[str, list[Section]]:
    import docx

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        declared = sum(info.file_size for info in archive.infolist())
    # python-docx inflates members fully in memory; refuse before it does (zip bombs).
    if declared > max_uncompressed_bytes:
        raise LoaderError(
            f"{name} would decompress to {declared} bytes, over the limit of "
            f"{max_uncompressed_bytes} (RAGTUNE_MAX_UNCOMPRESSED_BYTES)"
        )
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx surfaces lxml/zip/KeyError failures directly
        raise LoaderError(f"{name} is a damaged Word document ({type(exc).__name__}: {exc})") from exc
    sections: list[Section] = []
    heading, lines = "", []
    for paragraph in document.paragraphs:
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        text = paragraph.text.strip()
        if style.lower().startswith(("heading", "title")) and text:
            sections.append(Section(_normalise("\n".join(lines)), heading=heading))
            heading, lines = text, []
        elif text:
            lines.append(text)
    sections.append(Section(_normalise("\n".join(lines)), heading=heading))
    for table in document.tables:
        rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
        sections.append(Section(_normalise("\n".join(rows)), heading=heading))
    return str(document.core_properties.title or ""), sections


_HEADING_TAGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
_HEADING_MARK = "\x1eH"  # a record separator no real document text contains


def _html_sections(html: str) -> tuple[str, list[Section]]:
    soup = BeautifulSoup(html, "lxml")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(["head", "script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    for tag in soup.find_all(_HEADING_TAGS):
        level = int(tag.name[1])
        tag.replace_with(NavigableString(f"\n{_HEADING_MARK}{level} {tag.get_text(' ', strip=True)}\n"))
    for tag in soup.find_all(["p", "div", "pre", "blockquote", "section", "article", "table", "ul", "ol"]):
        tag.insert_after(NavigableString("\n\n"))
    for tag in soup.find_all(["li", "br", "tr", "dt", "dd"]):
        tag.insert_after(NavigableString("\n"))
    text = soup.get_text()

    sections: list[Section] = []
    trail: list[tuple[int, str]] = []  # the open headings, outermost first
    lines: list[str] = []

    def flush() -> None:
        sections.append(Section(_normalise("\n".join(lines)), heading=" > ".join(h for _, h in trail)))
        lines.clear()

    for line in text.split("\n"):
        if line.startswith(_HEADING_MARK):
            flush()
            level, _, heading = line[len(_HEADING_MARK) :].partition(" ")
            trail = [(lvl, h) for lvl, h in trail if lvl < int(level)] + [(int(level), heading.strip())]
        else:
            lines.append(line)
    flush()
    first_heading = next((s.heading.split(" > ")[0] for s in sections if s.heading), "")
    return title or first_heading, sections
