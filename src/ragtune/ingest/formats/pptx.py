"""PowerPoint presentations with python-pptx: one section per slide (page = slide number,
heading = its title), its text boxes and tables (as Markdown rows), then its speaker notes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from ragtune.ingest.formats.base import Format, Limits, LoaderError, check_archive, metadata_title, normalise
from ragtune.ingest.formats.tables import markdown_table
from ragtune.types import Section


def check_pptx(data: bytes, name: str, limits: Limits) -> None:
    check_archive(data, name, limits, "pptx")


def _shapes(shapes: Any) -> Iterator[Any]:
    """Every shape, those inside groups too."""
    from pptx.shapes.group import GroupShape

    for shape in shapes:
        if isinstance(shape, GroupShape):
            yield from _shapes(shape.shapes)
        else:
            yield shape


def _slide_text(slide: Any, title: Any) -> str:
    blocks: list[str] = []
    for shape in _shapes(slide.shapes):
        if title is not None and shape.shape_id == title.shape_id:
            continue
        if getattr(shape, "has_table", False) and shape.has_table:
            rows = ([cell.text for cell in row.cells] for row in shape.table.rows)
            blocks.append(f"\n{markdown_table(rows)}\n")
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            blocks.append(shape.text_frame.text)
    if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
        blocks.append("\n" + slide.notes_slide.notes_text_frame.text)
    return normalise("\n".join(blocks))


def load_pptx(data: bytes, name: str, limits: Limits) -> tuple[str, list[Section]]:
    import pptx

    check_pptx(data, name, limits)
    try:
        presentation = pptx.Presentation(io.BytesIO(data))
        if len(presentation.slides) > limits.max_pages:
            raise LoaderError(
                f"{name} has {len(presentation.slides)} slides, over the limit of {limits.max_pages} (RAGTUNE_MAX_PAGES)",
                "page_limit",
            )
        sections = []
        for number, slide in enumerate(presentation.slides, start=1):
            title = slide.shapes.title
            heading = " ".join(title.text_frame.text.split()) if title is not None and title.has_text_frame else ""
            sections.append(Section(_slide_text(slide, title), page=number, heading=heading))
        document_title = metadata_title(presentation.core_properties.title)
    except LoaderError:
        raise
    except Exception as exc:  # python-pptx surfaces lxml/zip/KeyError failures directly
        raise LoaderError(
            f"{name} is a damaged PowerPoint presentation ({type(exc).__name__}: {exc})", "damaged_pptx"
        ) from exc
    return document_title, sections


PPTX = Format(
    "pptx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    (".pptx",),
    load_pptx,
    check_pptx,
    zip_member="ppt/presentation.xml",
    misnamed="is not a zip archive: not a PowerPoint presentation",
    label="PowerPoint presentation",
)
