"""Parsing has limits that hold whatever a document contains: in-format checks refuse known
bombs cheaply, and the sandbox bounds the time and memory of everything else."""

from __future__ import annotations

import codecs
import io
import time
import zipfile

import pytest

from ragtune.ingest.formats import Limits, LoaderError
from ragtune.ingest.loaders import detect_format, load_bytes
from ragtune.ingest.sandbox import BoundedParser, Parsed, parse_document
from ragtune.types import Labels, LoadedDocument, Section


def test_nested_div_html_is_refused_at_the_nesting_limit():
    depth = 10 * 1024 * 1024 // 11
    data = b"<html><body>" + b"<div>" * depth + b"x" + b"</div>" * depth + b"</body></html>"
    with pytest.raises(LoaderError, match="RAGTUNE_MAX_NESTING_DEPTH") as caught:
        load_bytes(data, "bomb.html", Limits(max_nesting_depth=512))
    assert caught.value.code == "nesting_limit"


def test_html_within_the_nesting_limit_still_loads():
    data = b"<html><body><h1>Setup</h1>" + b"<div>" * 100 + b"Run make demo." + b"</div>" * 100 + b"</body></html>"
    doc = load_bytes(data, "ok.html", Limits(max_nesting_depth=512))
    assert doc.sections[0].heading == "Setup" and "Run make demo." in doc.text


def test_deep_markdown_lists_fail_as_a_loader_error():
    lines = [" " * (4 * level) + f"- item {level}" for level in range(2000)]
    data = "\n".join(lines).encode()
    while len(data) < 1024 * 1024:
        data += b"\n\n" + data[:200_000]
    with pytest.raises(LoaderError, match="RAGTUNE_MAX_NESTING_DEPTH"):
        load_bytes(data, "deep.md", Limits(max_nesting_depth=512))


def test_markdown_recursion_error_never_escapes(monkeypatch):
    from ragtune.ingest.formats import html

    def recurse(*_: object, **__: object) -> str:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(html, "render_markdown", recurse)
    with pytest.raises(LoaderError, match="nests too deeply") as caught:
        load_bytes(b"# Title\n\n> > > deep", "deep.md")
    assert caught.value.code == "nesting_limit"


def test_pdf_over_max_pages_is_refused_before_extracting():
    import builders  # here, not at the top: the sandbox's child imports this module

    with pytest.raises(LoaderError, match="RAGTUNE_MAX_PAGES") as caught:
        load_bytes(builders.blank_pdf(30), "many.pdf", Limits(max_pages=10))
    assert caught.value.code == "page_limit"


def test_extracted_text_over_the_limit_is_refused():
    with pytest.raises(LoaderError, match="RAGTUNE_MAX_EXTRACTED_CHARS"):
        load_bytes(b"word " * 10_000, "big.txt", Limits(max_extracted_chars=1000))


def test_docx_with_lying_sizes_is_refused_while_inflating():
    import builders

    data = builders.lying_docx(50 * 1024 * 1024)
    assert sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(data)).infolist()) < 1024 * 1024
    with pytest.raises(LoaderError, match=r"damaged zip/DOCX archive \(Bad CRC-32") as caught:
        load_bytes(data, "liar.docx", Limits(max_uncompressed_bytes=10 * 1024 * 1024))
    assert caught.value.code == "damaged_docx"


def test_honest_docx_over_the_limit_counts_real_bytes():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        for i in range(4):  # each under the limit, together over it
            archive.writestr(f"word/part{i}.xml", b" " * (3 * 1024 * 1024))
        archive.writestr("word/document.xml", b"<w:document/>")
    with pytest.raises(LoaderError, match="RAGTUNE_MAX_UNCOMPRESSED_BYTES"):
        load_bytes(out.getvalue(), "big.docx", Limits(max_uncompressed_bytes=10 * 1024 * 1024))


@pytest.mark.parametrize(
    ("bom", "encoding"),
    [
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
    ],
)
def test_utf16_and_utf32_text_with_a_bom_is_loaded(bom, encoding):
    data = bom + "# Café\n\nThe staging cluster runs in Frankfurt.".encode(encoding)
    assert detect_format(data, "notes.txt").name == "txt"
    doc = load_bytes(data, "notes.md")
    assert doc.sections[0].heading == "Café" and "Frankfurt" in doc.text


# --- the sandbox ---------------------------------------------------------------------------
def slow_target(
    data: bytes, source: str, limits: Limits, size: int, overlap: int, labels: Labels, doc_id: str
) -> Parsed:
    if data.startswith(b"slow"):
        time.sleep(60)
    if data.startswith(b"hungry"):
        hoard = [bytearray(64 * 1024 * 1024) for _ in range(64)]  # 4 GiB, over the child's limit
        del hoard
    return parse_document(data, source, limits, size, overlap, labels, doc_id)


def test_sandbox_timeout_and_memory_limit_end_as_loader_errors_and_the_next_document_parses():
    parser = BoundedParser(timeout_s=3, max_memory_mb=512, target=slow_target)
    try:
        doc, chunks = parser.parse(b"# A\n\nfirst document", "a.md", Limits(), 1000, 200)
        assert isinstance(doc, LoadedDocument) and chunks[0].text == "first document"

        with pytest.raises(LoaderError, match=r"slow\.txt took longer than 3 s .*RAGTUNE_PARSE_TIMEOUT_S") as caught:
            parser.parse(b"slow one", "slow.txt", Limits(), 1000, 200)
        assert caught.value.code == "parse_timeout"
        doc, _ = parser.parse(b"after a timeout", "b.txt", Limits(), 1000, 200)
        assert doc.sections == [Section("after a timeout")]

        with pytest.raises(LoaderError, match=r"more than 512 MiB .*RAGTUNE_PARSE_MAX_MEMORY_MB") as caught:
            parser.parse(b"hungry one", "hungry.txt", Limits(), 1000, 200)
        assert caught.value.code == "parse_memory"
        doc, _ = parser.parse(b"after running out of memory", "c.txt", Limits(), 1000, 200)
        assert doc.text == "after running out of memory"

        with pytest.raises(LoaderError, match="not valid UTF-8"):  # a loader's own error passes through
            parser.parse(b"caf\xe9", "bad.txt", Limits(), 1000, 200)
    finally:
        parser.close()


def test_folder_ingest_with_a_bomb_next_to_a_good_file(system, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.md").write_text("# Good\n\nThe staging cluster runs in Frankfurt.")
    depth = 2_000_000
    (folder / "bomb.html").write_bytes(b"<html><body>" + b"<div>" * depth + b"</div>" * depth + b"</body></html>")
    report = system.ingestor.ingest_paths([folder], progress=False)
    assert report.indexed == [str(folder / "good.md")]
    [(source, message)] = report.failed
    assert source == str(folder / "bomb.html") and "RAGTUNE_MAX_NESTING_DEPTH" in message


def test_shared_parsers_close_and_restart_on_demand():
    from ragtune.ingest.sandbox import close_shared, shared_parser

    parser = shared_parser(30, 1024)
    assert shared_parser(30, 1024) is parser
    assert parser.parse(b"before", "a.txt", Limits(), 1000, 200)[0].text == "before"
    close_shared()
    assert parser.parse(b"after", "b.txt", Limits(), 1000, 200)[0].text == "after"
    close_shared()
