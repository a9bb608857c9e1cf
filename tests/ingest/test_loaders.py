import io
from pathlib import Path

import pytest

from builders import docx_bytes, encrypted_pdf_bytes, pdf_bytes, zip_bomb_docx
from ragtune.ingest.formats import DOCX, FORMATS, HTML, MARKDOWN, PDF, TEXT, Limits, LoaderError
from ragtune.ingest.loaders import detect_format, load_bytes


def test_pdf_keeps_page_numbers_and_title():
    doc = load_bytes(pdf_bytes(["Alpha page text.", "Beta page text."], title="Guide"), "guide.pdf")
    assert doc.content_type == PDF.content_type
    assert doc.title == "Guide"
    assert [(s.page, s.text) for s in doc.sections] == [(1, "Alpha page text."), (2, "Beta page text.")]


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ("launch.html", "launch-guide"),  # a browser's print to PDF of launch.html
        ("Microsoft Word - Launch plan.docx", "launch-guide"),
        ("/Users/me/Desktop/launch.pdf", "launch-guide"),
        ("Untitled", "launch-guide"),
        ("", "launch-guide"),
        ("Launch guide", "Launch guide"),
        ("Node.js launch checklist", "Node.js launch checklist"),  # a dot is not yet a file name
    ],
)
def test_a_metadata_title_that_is_a_file_name_is_not_the_title(metadata, expected):
    doc = load_bytes(pdf_bytes(["Launch at dawn."], title=metadata), "uploads/launch-guide.pdf")
    assert doc.title == expected


def test_html_and_docx_titles_that_are_file_names_fall_back_too():
    html = b"<html><head><title>index.html</title></head><body><h1>Launch day</h1><p>Text.</p></body></html>"
    assert load_bytes(html, "page.html").title == "Launch day"  # the first heading, as without a title
    import docx

    document = docx.Document()
    document.core_properties.title = "plan.docx"
    document.add_paragraph("Some text.")
    out = io.BytesIO()
    document.save(out)
    assert load_bytes(out.getvalue(), "uploads/plan-v2.docx").title == "plan-v2"


def test_docx_sections_follow_headings():
    data = docx_bytes(
        [
            ("Normal", "Intro text."),
            ("Heading 1", "Setup"),
            ("Normal", "Run make demo."),
            ("Heading 2", "Details"),
            ("Normal", "More."),
        ]
    )
    doc = load_bytes(data, "manual.docx")
    assert doc.content_type == DOCX.content_type
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("", "Intro text."),
        ("Setup", "Run make demo."),
        ("Details", "More."),
    ]


def test_markdown_heading_trail_and_no_markup():
    doc = load_bytes(b"# Guide\nIntro **bold**.\n\n## Install\n- step one\n- step two\n", "guide.md")
    assert doc.content_type == MARKDOWN.content_type
    assert doc.sections[0].heading == "Guide" and doc.sections[0].text == "Intro bold."
    assert doc.sections[1].heading == "Guide > Install"
    assert "step one" in doc.sections[1].text and "**" not in doc.text


def test_html_drops_scripts_and_keeps_title():
    html = b"<!doctype html><html><head><title>Page</title><style>p{}</style></head><body><script>evil()</script><h1>Top</h1><p>Body text.</p></body></html>"
    doc = load_bytes(html, "page.txt")  # named as text: detected as HTML from the content
    assert doc.content_type == HTML.content_type and doc.title == "Page"
    assert doc.text == "Body text." and "evil" not in doc.text


@pytest.mark.parametrize(
    ("data", "name", "expected"),
    [
        (pdf_bytes(["x"]), "report.txt", PDF),  # content wins over a wrong extension
        (docx_bytes([("Normal", "x")]), "notes.md", DOCX),
        (b"<html><body>x</body></html>", "notes.txt", HTML),
        (b"plain words", "README.TXT", TEXT),
    ],
)
def test_type_is_detected_from_content(data, name, expected):
    assert detect_format(data, name) is expected


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (b"plain words", "README", "has no file extension"),
        (b"plain words", "notes.exe", "is named .exe, not a supported type"),
        (b"", "empty.txt", "is empty"),
        (b"   \n\t ", "blank.md", "is empty"),
        (bytes(range(256)) * 8, "binary.txt", "binary file"),
        (b"caf\xe9 au lait", "latin1.txt", "not valid UTF-8 (byte 0xe9 at offset 3)"),
        (b"hello", "fake.pdf", "not a PDF"),
        (b"PK\x03\x04garbage", "broken.docx", "damaged zip"),
        (encrypted_pdf_bytes("secret text"), "locked.pdf", "encrypted PDF"),
        (pdf_bytes(["Some text that is long enough."])[:200], "truncated.pdf", "PDF"),
        (b"<html><body><script>x()</script></body></html>", "empty.html", "no text"),
    ],
)
def test_hostile_files_raise_clear_errors(data, name, message):
    with pytest.raises(LoaderError, match=None) as info:
        load_bytes(data, name)
    assert message in str(info.value)
    assert name in str(info.value)


def test_zip_bomb_docx_is_refused_before_inflating():
    with pytest.raises(LoaderError, match="would decompress to"):
        load_bytes(zip_bomb_docx(10 * 1024 * 1024), "bomb.docx", Limits(max_uncompressed_bytes=1024 * 1024))


def test_the_readme_lists_the_registered_formats():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert ", ".join(fmt.name for fmt in FORMATS) in readme
