"""Images (PNG, JPEG, TIFF) read by OCR with Pillow and Tesseract: one section per frame
(page = frame number: a multi-page TIFF is a scanned document's usual form).

Pillow reads the header first, so the pixel count is checked before anything is decoded: a
small file can declare 100,000 × 100,000 pixels (a decompression bomb)."""

from __future__ import annotations

import io
from typing import Any

from ragtune.ingest.formats.base import Format, Limits, LoaderError, chars_error, normalise
from ragtune.ingest.formats.ocr import ocr_refused, page_limit, read_text
from ragtune.types import Section


def _damaged(name: str, exc: Exception) -> LoaderError:
    return LoaderError(f"{name} is a damaged or truncated image ({type(exc).__name__}: {exc})", "damaged_image")


def _checked(frame: Any, name: str, limits: Limits, number: int) -> Any:
    width, height = frame.size
    if width * height > limits.max_image_pixels:
        where = f" (page {number})" if number > 1 else ""
        raise LoaderError(
            f"{name} is {width} × {height} pixels{where}, over the limit of {limits.max_image_pixels} pixels "
            "for OCR; scale it down",
            "image_limit",
        )
    return frame


def _open(data: bytes, name: str, limits: Limits) -> Any:
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own bound, past twice its default limit
        raise LoaderError(
            f"{name} is over the limit of {limits.max_image_pixels} pixels for OCR ({exc}); scale it down",
            "image_limit",
        ) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError… on hostile headers
        raise _damaged(name, exc) from exc
    return _checked(image, name, limits, 1)


def check_image(data: bytes, name: str, limits: Limits) -> None:
    """The header only: the format, the pixel count, and whether OCR may run at all."""
    if limits.ocr == "off":
        raise ocr_refused(name, "an image")
    _open(data, name, limits)


def load_image(data: bytes, name: str, limits: Limits) -> tuple[str, list[Section]]:
    from PIL import ImageSequence

    check_image(data, name, limits)
    image = _open(data, name, limits)
    sections: list[Section] = []
    extracted = 0
    try:
        for number, frame in enumerate(ImageSequence.Iterator(image), start=1):
            if number > limits.max_ocr_pages:
                raise page_limit(name, number, limits)
            grey = _checked(frame, name, limits, number).convert("L")  # decodes the frame
            sections.append(Section(normalise(read_text(grey, name, number, limits)), page=number))
            extracted += len(sections[-1].text)
            if extracted > limits.max_extracted_chars:
                raise chars_error(name, limits)
    except LoaderError:
        raise
    except Exception as exc:
        raise _damaged(name, exc) from exc
    if not any(section.text for section in sections):
        raise LoaderError(f"{name} contains no text that OCR could read", "no_text")
    return "", sections


def _image(name: str, content_type: str, extensions: tuple[str, ...], magic: tuple[bytes, ...]) -> Format:
    return Format(
        name,
        content_type,
        extensions,
        load_image,
        check_image,
        magic=magic,
        misnamed=f"its bytes are not a {name.upper()} image",
    )


PNG = _image("png", "image/png", (".png",), (b"\x89PNG\r\n\x1a\n",))
JPEG = _image("jpeg", "image/jpeg", (".jpg", ".jpeg"), (b"\xff\xd8\xff",))
TIFF = _image("tiff", "image/tiff", (".tif", ".tiff"), (b"II*\x00", b"MM\x00*"))
