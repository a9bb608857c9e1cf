"""Word documents with python-docx: sections split at heading styles, tables as text rows."""

from __future__ import annotations

import io
import zipfile

from ragtune.ingest.formats.base import Format, Limits, LoaderError, metadata_title, normalise
from ragtune.types import Section

_BLOCK = 1024 * 1024


def check_docx(data: bytes, name: str, limits: Limits) -> None:
    """Refuses a zip bomb by inflating every member in blocks and counting the real bytes
    (a member's declared size can lie), stopping at the limit; memory stays at one block.
    Only an archive that passes is given to python-docx, which inflates members whole."""
    declared_total = inflated = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            declared_total = sum(info.file_size for info in infos)
            if declared_total <= limits.max_uncompressed_bytes:
                for info in infos:
                    with archive.open(info) as member:
                        while block := member.read(_BLOCK):
                            inflated += len(block)
                            if inflated > limits.max_uncompressed_bytes:
                                break
                    if inflated > limits.max_uncompressed_bytes:
                        break
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, ValueError) as exc:
        # zipfile raises BadZipFile on a CRC or size mismatch (a header that lies)
        raise LoaderError(f"{name} is a damaged zip/DOCX archive ({exc})", "damaged_docx") from exc
    if declared_total > limits.max_uncompressed_bytes or inflated > limits.max_uncompressed_bytes:
        size = f"{declared_total} bytes" if declared_total > limits.max_uncompressed_bytes else "more bytes"
        raise LoaderError(
            f"{name} would decompress to {size}, over the limit of "
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
