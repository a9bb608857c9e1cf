"""Text from pictures of text, by Tesseract (pytesseract runs the `tesseract` program once a page).

Not a format itself: the image formats and the PDF loader's scanned pages read through it.
Each page is one Tesseract process, killed past ``Limits.ocr_page_timeout_s``. Words Tesseract
is unsure of are dropped: noise and speckles come out as short junk "words" of low confidence,
which would otherwise be indexed as if they were text.
"""

from __future__ import annotations

import os
from typing import Any

from ragtune.ingest.formats.base import Limits, LoaderError

# Tesseract's word confidence runs 0-100; a clean scan's words score over 80, the junk read
# from random noise under 30.
MIN_CONFIDENCE = 30.0
INSTALL = "apt-get install tesseract-ocr tesseract-ocr-eng (scripts/system-deps/tesseract.sh)"


def ocr_unavailable(name: str) -> LoaderError:
    return LoaderError(
        f"{name} needs OCR, but Tesseract is not installed; install it ({INSTALL}), or set RAGTUNE_OCR=off "
        "to refuse such files",
        "ocr_unavailable",
    )


def ocr_refused(name: str, what: str) -> LoaderError:
    return LoaderError(f"{name} is {what} and OCR is off (RAGTUNE_OCR=off); set RAGTUNE_OCR=auto to read it", "no_text")


def page_limit(name: str, pages: int, limits: Limits) -> LoaderError:
    return LoaderError(
        f"{name} needs OCR on more than {limits.max_ocr_pages} pages ({pages} found); split it into smaller files",
        "ocr_page_limit",
    )


def read_text(image: Any, name: str, page: int, limits: Limits) -> str:
    """The words Tesseract reads in `image` (a PIL image), a line per line and a blank line between paragraphs."""
    import pytesseract

    # Tesseract's OpenMP threads contend with each other (and with the indexer): on 2 cores one
    # thread reads a full page in 1.7 s, its default threads in 6.2 s. A deployment may set its own.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    try:
        data = pytesseract.image_to_data(
            image, lang="eng", output_type=pytesseract.Output.DICT, timeout=limits.ocr_page_timeout_s
        )
    except pytesseract.TesseractNotFoundError as exc:
        raise ocr_unavailable(name) from exc
    except pytesseract.TesseractError as exc:
        raise LoaderError(f"{name}: Tesseract failed on page {page} ({exc.message})", "ocr_failed") from exc
    except RuntimeError as exc:  # how pytesseract reports the killed process
        raise LoaderError(
            f"{name}: OCR of page {page} took longer than {limits.ocr_page_timeout_s:g} s (is it a picture of text?)",
            "ocr_timeout",
        ) from exc
    lines: list[str] = []
    last: tuple[int, int, int] | None = None
    for word, confidence, block, paragraph, line in zip(
        data["text"], data["conf"], data["block_num"], data["par_num"], data["line_num"]
    ):
        if not word.strip() or float(confidence) < MIN_CONFIDENCE:
            continue
        key = (block, paragraph, line)
        if last is not None and key[:2] != last[:2]:
            lines.append("")
        if key == last:
            lines[-1] += " " + word
        else:
            lines.append(word)
        last = key
    return "\n".join(lines)
