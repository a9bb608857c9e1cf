"""Excel workbooks with openpyxl (read-only, cached values): each sheet's rows as Markdown
table sections under the sheet's name, the header row leading every section."""

from __future__ import annotations

import io

from ragtune.ingest.formats.base import Format, Limits, LoaderError, check_archive, metadata_title
from ragtune.ingest.formats.tables import SheetWriter
from ragtune.types import Section


def check_xlsx(data: bytes, name: str, limits: Limits) -> None:
    check_archive(data, name, limits, "xlsx")


def _damaged(name: str, exc: Exception) -> LoaderError:
    return LoaderError(f"{name} is a damaged Excel workbook ({type(exc).__name__}: {exc})", "damaged_xlsx")


def load_xlsx(data: bytes, name: str, limits: Limits) -> tuple[str, list[Section]]:
    import openpyxl

    check_xlsx(data, name, limits)
    try:
        # data_only: the values Excel last computed, not the formulas; read_only: rows streamed from the XML
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl surfaces zip/XML/KeyError failures directly
        raise _damaged(name, exc) from exc
    writer = SheetWriter(name, limits)
    sections: list[Section] = []
    try:
        for sheet in workbook.worksheets:
            # The declared dimensions can claim a million rows by 16,384 columns, which openpyxl
            # would pad every row to; without them a row is as long as its last real cell.
            sheet.reset_dimensions()
            sections += writer.sheet(sheet.title, sheet.iter_rows(values_only=True))
        title = metadata_title(workbook.properties.title)
    except LoaderError:
        raise
    except Exception as exc:
        raise _damaged(name, exc) from exc
    finally:
        workbook.close()
    return title, sections


XLSX = Format(
    "xlsx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    (".xlsx",),
    load_xlsx,
    check_xlsx,
    zip_member="xl/workbook.xml",
    misnamed="is not a zip archive: not an Excel workbook",
    label="Excel workbook",
)
