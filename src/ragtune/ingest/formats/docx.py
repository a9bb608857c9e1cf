"""Word documents with python-docx: sections split at heading styles, tables as text rows."""

from __future__ import annotations

import io
import zipfile

from ragtune.ingest.formats.base import Format, Limits, LoaderError, metadata_title, normalise
from ragtune.types import Section


def check_docx(data: bytes, name: str, limits: Limits) -> None:
    """Refuses a zip bomb from its directory, which declares every member's inflated size,
    before anything is decompressed (python-docx inflates members fully in memory)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise LoaderError(f"{name} is a damaged zip/DOCX archive ({exc})", "damaged_docx") from exc
    if declared > limits.max_uncompressed_bytes:
        raise LoaderError(
            f"{name} would decompress to {declared} bytes, over the limit of "
            f"{limits.max_uncompressed_bytes} (RAGTUNE_MAX_UNCOMPRESSED_BYTES)",
            "decompression_limit",
        )


def load_docx(data: bytes, name: str, limits: Limits) -> tuple[str, list[Section]]:
    import docx

    check_docx(data, name, limits)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx surfaces lxml/zip/KeyError failures directly
        raise LoaderError(f"{name} is a damaged Word document ({type(exc).__name__}: {exc})", "damaged_docx") from exc
    sections: list[Section] = []
    heading = ""
    lines: list[str] = []
    for paragraph in document.paragraphs:
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        text = paragraph.text.strip()
        if style.lower().startswith(("heading", "title")) and text:
            sections.append(Section(normalise("\n".join(lines)), heading=heading))
            heading, lines = text, []
        elif text:
            lines.append(text)
    sections.append(Section(normalise("\n".join(lines)), heading=heading))
    for table in document.tables:
        rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
        sections.append(Section(normalise("\n".join(rows)), heading=heading))
    return metadata_title(document.core_properties.title), sections


DOCX = Format(
    "docx",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    (".docx",),
    load_docx,
    check_docx,
    zip_member="word/document.xml",
    misnamed="is not a zip archive: not a Word document",
)
