"""Word documents with python-docx: sections split at heading styles, tables as Markdown rows
where they stand in the text."""

from __future__ import annotations

import io

from ragtune.ingest.formats.base import Format, Limits, LoaderError, check_archive, metadata_title, normalise
from ragtune.ingest.formats.tables import markdown_table
from ragtune.types import Section


def check_docx(data: bytes, name: str, limits: Limits) -> None:
    check_archive(data, name, limits, "docx")


def load_docx(data: bytes, name: str, limits: Limits) -> tuple[str, list[Section]]:
    import docx
    from docx.table import Table

    check_docx(data, name, limits)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx surfaces lxml/zip/KeyError failures directly
        raise LoaderError(f"{name} is a damaged Word document ({type(exc).__name__}: {exc})", "damaged_docx") from exc
    sections: list[Section] = []
    heading = ""
    lines: list[str] = []
    for block in document.iter_inner_content():  # paragraphs and tables in the body's order
        if isinstance(block, Table):
            # A blank line on each side keeps the table one block for the chunker.
            lines.append(f"\n{markdown_table([cell.text for cell in row.cells] for row in block.rows)}\n")
            continue
        style = (block.style.name if block.style is not None else "") or ""
        text = block.text.strip()
        if style.lower().startswith(("heading", "title")) and text:
            sections.append(Section(normalise("\n".join(lines)), heading=heading))
            heading, lines = text, []
        elif text:
            lines.append(text)
    sections.append(Section(normalise("\n".join(lines)), heading=heading))
    return metadata_title(document.core_properties.title), sections


DOCX = Format(
    "docx",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    (".docx",),
    load_docx,
    check_docx,
    zip_member="word/document.xml",
    misnamed="is not a zip archive: not a Word document",
    label="Word document",
)
