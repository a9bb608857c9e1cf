"""Tables as Markdown table lines, the one form a table takes in a chunk whatever its format.

A table kept as rows (``| Region | Revenue |``) is still a table to a reader and to an LLM;
flattened into text, its numbers lose their columns. Spreadsheets, which are nothing but
tables, are cut into sections of whole rows, each starting with the header, so that every
chunk the chunker makes of them says what its columns are.

    >>> print(markdown_table([["Region", "Revenue"], ["North", 12], ["South | East", None]]))
    | Region | Revenue |
    | --- | --- |
    | North | 12 |
    | South \\| East |  |
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence

from ragtune.ingest.formats.base import Limits, LoaderError, chars_error
from ragtune.types import Section


def cell_text(value: object) -> str:
    """One cell on one line: a newline inside a cell would end its row."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # spreadsheets store 12 as 12.0
    elif isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        value = value.isoformat()
    return " ".join(str(value).split()).replace("|", "\\|")


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cells(row: Sequence[object]) -> list[str]:
    cells = [cell_text(value) for value in row]
    while cells and not cells[-1]:
        cells.pop()
    return cells


def _header(cells: list[str]) -> str:
    return _line(cells) + "\n" + _line(["---"] * len(cells))


def markdown_table(rows: Iterable[Sequence[object]]) -> str:
    """The rows as a Markdown table, the first one as its header; "" when every cell is empty."""
    lines = [cells for cells in map(_cells, rows) if cells]
    if not lines:
        return ""
    width = max(map(len, lines))
    padded = [cells + [""] * (width - len(cells)) for cells in lines]
    return "\n".join([_header(padded[0]), *map(_line, padded[1:])])


class SheetWriter:
    """Turns a workbook's sheets into sections of at most `limits.chunk_size` characters, each
    a Markdown table led by its sheet's header row (the first row with a value).

    Work is bounded across the whole document: every cell read counts, empty ones too (a sheet
    can declare a million empty rows for little bytes), against `limits.max_extracted_chars`."""

    def __init__(self, name: str, limits: Limits) -> None:
        self.name, self.limits = name, limits
        self.cells = self.chars = 0

    def sheet(self, heading: str, rows: Iterable[Sequence[object]]) -> list[Section]:
        sections: list[Section] = []
        header = ""
        width = 0
        body: list[str] = []
        size = 0
        for row in rows:
            self.cells += max(1, len(row))
            if self.cells > self.limits.max_extracted_chars:
                raise LoaderError(
                    f"{self.name} has more than {self.limits.max_extracted_chars} cells "
                    "(RAGTUNE_MAX_EXTRACTED_CHARS bounds a spreadsheet's cells too)",
                    "text_limit",
                )
            cells = _cells(row)
            if not cells:
                continue
            if not header:
                header, width = _header(cells), len(cells)
                continue
            line = _line(cells + [""] * (width - len(cells)))
            self.chars += len(line) + 1
            if self.chars > self.limits.max_extracted_chars:
                raise chars_error(self.name, self.limits)
            # A header already as long as a chunk leaves room for no row: one row a section, then.
            if body and len(header) + size + len(line) + 1 > self.limits.chunk_size:
                sections.append(Section("\n".join([header, *body]), heading=heading))
                body, size = [], 0
            body.append(line)
            size += len(line) + 1
        if header:
            sections.append(Section("\n".join([header, *body]), heading=heading))
        return sections
