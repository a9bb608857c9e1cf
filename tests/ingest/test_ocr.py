"""OCR with Tesseract: images are documents, scanned PDF pages are read (RAGTUNE_OCR), and the
work stays bounded (pixels, noise, a missing Tesseract are per-document errors)."""

from __future__ import annotations

import time

import pytest

from builders import image_bytes, noise_image, pdf_bytes, png_declaring, requires_tesseract, text_image
from ragtune.config import Settings
from ragtune.ingest.chunking import chunk_document
from ragtune.ingest.formats import JPEG, PDF, PNG, TIFF, Limits, LoaderError
from ragtune.ingest.loaders import detect_format, load_bytes
from ragtune.ingest.sandbox import BoundedParser

LINES = ["The ferry leaves at noon.", "Tickets cost four euros."]


@pytest.fixture(scope="module")
def page():
    return text_image(LINES)


@requires_tesseract
@pytest.mark.parametrize(("fmt", "name", "expected"), [("PNG", "note.png", PNG), ("JPEG", "note.jpg", JPEG)])
def test_an_image_of_text_is_read_by_ocr(page, fmt, name, expected):
    data = image_bytes([page], fmt)
    assert detect_format(data, name) is expected
    started = time.perf_counter()
    doc = load_bytes(data, name)
    elapsed = time.perf_counter() - started
    assert doc.content_type == expected.content_type and doc.title == "note"
    [section] = doc.sections
    assert section.page == 1 and section.text == "\n\n".join(LINES)
    assert elapsed < 10, f"OCR of one page took {elapsed:.1f} s"


@requires_tesseract
def test_a_multi_page_tiff_has_a_page_per_frame(page):
    other = text_image(["Boarding closes ten minutes before."])
    doc = load_bytes(image_bytes([page, other], "TIFF"), "scan.tiff")
    assert doc.content_type == TIFF.content_type
    assert [(s.page, "ferry" in s.text, "Boarding" in s.text) for s in doc.sections] == [
        (1, True, False),
        (2, False, True),
    ]


@requires_tesseract
def test_a_scanned_pdf_is_read_by_ocr_under_auto_and_refused_when_off(page, monkeypatch):
    scan = image_bytes([page, text_image(["Boarding closes ten minutes before."])], "PDF")
    monkeypatch.setenv("RAGTUNE_OCR", "auto")
    auto = Limits.of(Settings().ingest)
    assert auto.ocr == "auto"
    doc = load_bytes(scan, "scan.pdf", auto)
    assert doc.content_type == PDF.content_type
    assert [s.page for s in doc.sections] == [1, 2] and "four euros" in doc.sections[0].text
    assert any("Boarding closes" in c.text for c in chunk_document(doc, 1000, 200))

    monkeypatch.setenv("RAGTUNE_OCR", "off")
    with pytest.raises(LoaderError, match="has no extractable text") as refused:
        load_bytes(scan, "scan.pdf", Limits.of(Settings().ingest))
    assert refused.value.code == "no_text" and "RAGTUNE_OCR=auto" in str(refused.value)


@requires_tesseract
def test_always_reads_every_pdf_page_by_ocr_and_auto_keeps_a_text_layer():
    data = pdf_bytes(["Harbour office opens at eight."])
    assert load_bytes(data, "text.pdf", Limits(ocr="auto")).sections[0].text == "Harbour office opens at eight."
    assert "Harbour office opens at eight" in load_bytes(data, "text.pdf", Limits(ocr="always")).sections[0].text


@requires_tesseract
def test_ocr_runs_in_the_bounded_parser_process(page):
    parser = BoundedParser(timeout_s=60, max_memory_mb=1024)
    try:
        doc, chunks = parser.parse(image_bytes([page]), "uploads/note.png", Limits(), 1000, 200)
    finally:
        parser.close()
    assert doc.content_type == PNG.content_type and "ferry leaves at noon" in chunks[0].text


@requires_tesseract
def test_an_image_of_noise_is_a_clear_no_text_error_in_bounded_time():
    started = time.perf_counter()
    with pytest.raises(LoaderError) as info:
        load_bytes(image_bytes([noise_image(1500)]), "noise.png")
    elapsed = time.perf_counter() - started
    assert info.value.code == "no_text" and "noise.png contains no text that OCR could read" in str(info.value)
    assert elapsed < 30, f"OCR of noise took {elapsed:.1f} s"


@pytest.mark.parametrize(
    ("side", "message"),
    [(10_000, "is 10000 × 10000 pixels, over the limit of 50000000"), (100_000, "over the limit of 50000000 pixels")],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns, then our check refuses
def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(side, message):
    data = png_declaring(side, side)
    for check in (PNG.check, PNG.load):  # the upload check, and the parse
        with pytest.raises(LoaderError) as info:
            check(data, "bomb.png", Limits())
        assert info.value.code == "image_limit" and message in str(info.value)


def test_images_are_refused_when_ocr_is_off(page):
    with pytest.raises(LoaderError, match="OCR is off") as info:
        load_bytes(image_bytes([page]), "note.png", Limits(ocr="off"))
    assert info.value.code == "no_text" and "RAGTUNE_OCR=auto" in str(info.value)


def test_a_missing_tesseract_names_what_to_install(page, monkeypatch):
    import pytesseract

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(LoaderError, match="Tesseract is not installed") as info:
        load_bytes(image_bytes([page]), "note.png")
    assert info.value.code == "ocr_unavailable" and "tesseract-ocr" in str(info.value)


def test_damaged_images_and_misnamed_ones_are_per_document_errors(page):
    png = image_bytes([page])
    with pytest.raises(LoaderError) as damaged:
        load_bytes(png[: len(png) // 2], "half.png")
    assert damaged.value.code == "damaged_image" and "half.png" in str(damaged.value)
    with pytest.raises(LoaderError) as misnamed:
        load_bytes(b"just some words", "photo.jpg")
    assert "is named .jpg but its bytes are not a JPEG image" in str(misnamed.value)


def test_too_many_frames_for_ocr_is_refused_by_the_page_limit(page):
    tiff = image_bytes([page, page, page], "TIFF")
    with pytest.raises(LoaderError, match="more than 2 pages") as info:
        load_bytes(tiff, "many.tif", Limits(max_ocr_pages=2, ocr_page_timeout_s=5))
    assert info.value.code == "ocr_page_limit"
