"""Documents as they really are: tables stay tables where they stand (PDF, DOCX, PPTX), slides
are pages, spreadsheets are tables whose header leads every chunk, and the README's format
table is the registry's."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest

from builders import docx_with_table, pptx_bytes, table_pdf_bytes, with_member, xlsx_bytes
from ragtune.config import Settings
from ragtune.ingest.chunking import chunk_document
from ragtune.ingest.formats import CSV, FORMATS, PPTX, XLSX, Limits, LoaderError
from ragtune.ingest.loaders import detect_format, load_bytes

ROWS = [["Region", "Revenue"], ["North", "120"], ["South", "80"]]
TABLE = "| Region | Revenue |\n| --- | --- |\n| North | 120 |\n| South | 80 |"
HEADER = "| Region | Units | Price |\n| --- | --- | --- |"


def test_a_pdf_table_is_markdown_rows_in_place_and_not_repeated_as_text():
    doc = load_bytes(table_pdf_bytes("Quarterly revenue by region.", ROWS, "Figures are in thousands."), "q3.pdf")
    [section] = doc.sections
    assert section.page == 1
    assert section.text == f"Quarterly revenue by region.\n\n{TABLE}\n\nFigures are in thousands."
    [chunk] = chunk_document(doc, 1000, 200)
    assert "| North | 120 |" in chunk.text and chunk.text.count("North") == 1


def test_a_docx_table_sits_between_the_paragraphs_around_it():
    doc = load_bytes(docx_with_table("Before the table.", ROWS, "After the table."), "report.docx")
    assert [s.text for s in doc.sections] == [f"Before the table.\n\n{TABLE}\n\nAfter the table."]


def test_pptx_slides_are_pages_with_titles_tables_and_notes():
    data = pptx_bytes(
        [("Launch plan", "We launch in May.", "Say the date twice."), ("Risks", "Supply delays.", "Name the vendor.")],
        table=[["Item", "Owner"], ["Docs", "Ann"]],
    )
    assert detect_format(data, "deck.pptx") is PPTX and detect_format(data, "deck.docx") is PPTX
    doc = load_bytes(data, "deck.pptx")
    assert doc.content_type == PPTX.content_type
    assert [(s.page, s.heading, s.text) for s in doc.sections] == [
        (
            1,
            "Launch plan",
            "We launch in May.\n\n| Item | Owner |\n| --- | --- |\n| Docs | Ann |\n\nSay the date twice.",
        ),
        (2, "Risks", "Supply delays.\n\nName the vendor."),
    ]


def _sales(rows: int) -> list[list[object]]:
    return [["Region", "Units", "Price"]] + [[f"Region {i}", i, i * 0.5] for i in range(rows)]


def _assert_header_in_every_chunk(chunks, rows: int) -> None:
    assert len(chunks) > 1
    assert all(chunk.text.startswith(HEADER + "\n") for chunk in chunks)
    body = [line for chunk in chunks for line in chunk.text.split("\n")[2:]]
    assert body == [f"| Region {i} | {i} | {i * 0.5:g} |" for i in range(rows)]  # every row once, whole


def test_xlsx_sheets_repeat_their_header_in_every_chunk_of_the_configured_size():
    data = xlsx_bytes({"Sales": _sales(200), "Notes": [["Owner", "Ann"]]})
    assert detect_format(data, "book.xlsx") is XLSX
    limits = Limits.of(Settings(chunk_size=400, chunk_overlap=50).ingest)
    assert limits.chunk_size == 400
    doc = load_bytes(data, "book.xlsx", limits)
    chunks = chunk_document(doc, 400, 50)
    assert doc.content_type == XLSX.content_type
    assert {c.heading for c in chunks} == {"Sales", "Notes"}
    assert all(len(c.text) <= 400 for c in chunks)
    _assert_header_in_every_chunk([c for c in chunks if c.heading == "Sales"], 200)
    assert [c.text for c in chunks if c.heading == "Notes"] == ["| Owner | Ann |\n| --- | --- |"]


def test_csv_delimiter_is_sniffed_and_its_header_repeated():
    lines = ["Region;Units;Price"] + [f"Region {i};{i};{i * 0.5:g}" for i in range(120)]
    doc = load_bytes("\n".join(lines).encode(), "exports/sales-2024.csv")
    assert doc.content_type == CSV.content_type and {s.heading for s in doc.sections} == {"sales-2024"}
    _assert_header_in_every_chunk(chunk_document(doc, 1000, 200), 120)


def test_a_ten_thousand_row_sheet_is_indexed_within_the_limits_or_refused_past_them():
    data = xlsx_bytes({"Sales": _sales(10_000)})
    started = time.perf_counter()
    doc = load_bytes(data, "big.xlsx")
    chunks = chunk_document(doc, 1000, 200)
    elapsed = time.perf_counter() - started
    _assert_header_in_every_chunk(chunks, 10_000)
    assert elapsed < 20, f"10,000 rows took {elapsed:.1f} s"
    with pytest.raises(LoaderError, match="RAGTUNE_MAX_EXTRACTED_CHARS") as refused:
        load_bytes(data, "big.xlsx", Limits(max_extracted_chars=100_000))
    assert refused.value.code == "text_limit" and "big.xlsx" in str(refused.value)


def test_a_sheet_declaring_a_million_rows_costs_only_its_real_cells():
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.active.title = "Sparse"
    workbook.active["A1"] = "Key"
    workbook.active["A2"] = "first"
    workbook.active["XFD1048576"] = "far corner"  # dimension A1:XFD1048576, a million rows apart
    out = io.BytesIO()
    workbook.save(out)
    started = time.perf_counter()
    with pytest.raises(LoaderError, match="cells") as refused:
        load_bytes(out.getvalue(), "sparse.xlsx", Limits(max_extracted_chars=100_000))
    assert refused.value.code == "text_limit" and time.perf_counter() - started < 10


@pytest.mark.parametrize(
    ("name", "data", "code", "message"),
    [
        (
            "deck.pptx",
            with_member(pptx_bytes([("A", "b", "c")]), "ppt/presentation.xml", b"<broken"),
            "damaged_pptx",
            "damaged PowerPoint",
        ),
        (
            "book.xlsx",
            with_member(xlsx_bytes({"S": [["a"]]}), "xl/workbook.xml", b"<broken"),
            "damaged_xlsx",
            "damaged Excel",
        ),
        ("deck.pptx", pptx_bytes([("A", "b", "c")])[:-200], "unsupported_type", "damaged zip"),
        ("book.xlsx", xlsx_bytes({"S": [["a"]]})[:-200], "unsupported_type", "damaged zip"),
        ("odd.csv", b'a,b\n"' + b"x" * 200_000 + b'",1\n', "damaged_csv", "field larger"),
    ],
)
def test_damaged_presentations_workbooks_and_csv_are_per_document_errors(name, data, code, message):
    with pytest.raises(LoaderError) as info:
        load_bytes(data, name)
    assert info.value.code == code and message in str(info.value) and name in str(info.value)


def test_a_zip_of_no_known_kind_names_every_zip_based_format():
    data = with_member(xlsx_bytes({"S": [["a"]]}), "xl/workbook.xml", b"")
    renamed = data.replace(b"xl/workbook.xml", b"xl/notebook.xml")
    with pytest.raises(LoaderError) as info:
        load_bytes(renamed, "book.xlsx")
    kinds = [fmt.label for fmt in FORMATS if fmt.zip_member]
    assert kinds == ["Word document", "PowerPoint presentation", "Excel workbook"]
    assert "not a Word document, PowerPoint presentation or Excel workbook" in str(info.value)


def test_the_readme_format_table_is_the_registry():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| format | extensions | what is kept |\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = [re.split(r"\s*\|\s*", line.strip("| ")) for line in table.splitlines()]
    assert [(name, extensions) for name, extensions, _kept in rows] == [
        (fmt.name, ", ".join(fmt.extensions)) for fmt in FORMATS
    ]
    assert all(kept for *_, kept in rows)
    assert ", ".join(fmt.name for fmt in FORMATS) in readme  # the ingest example's comment too
