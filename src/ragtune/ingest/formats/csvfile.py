"""CSV with the standard library: the delimiter sniffed (comma, semicolon, tab or bar), the
rows as Markdown table sections under the file's name, the header row leading every section."""

from __future__ import annotations

import csv
import io
from pathlib import PurePosixPath

from ragtune.ingest.formats.base import Format, Limits, LoaderError, check_text, decode_text
from ragtune.ingest.formats.tables import SheetWriter
from ragtune.types import Section

# The sniffer's regular expressions run over the whole sample: a bounded one keeps that cheap.
_SNIFF_CHARS = 16 * 1024


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # whole lines only: a cut line misleads the sniffer
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:  # one column, or too irregular to tell: commas, as the name says
        return csv.excel


def load_csv(data: bytes, name: str, limits: Limits) -> tuple[str, list[Section]]:
    text = decode_text(data, name)
    rows = csv.reader(io.StringIO(text, newline=""), _dialect(text))
    try:
        return "", SheetWriter(name, limits).sheet(PurePosixPath(name).stem, rows)
    except csv.Error as exc:  # e.g. a field over the csv module's 128 KiB field limit
        raise LoaderError(f"{name} is not a readable CSV file (line {rows.line_num}: {exc})", "damaged_csv") from exc


CSV = Format("csv", "text/csv", (".csv",), load_csv, check_text)
