"""What a document format is: how to recognise it, check it cheaply and load it into sections."""

from __future__ import annotations

import codecs
import io
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ragtune.config import IngestSettings
from ragtune.types import Section

DEFAULT_MAX_UNCOMPRESSED_BYTES = 200 * 1024 * 1024
_BLOCK = 1024 * 1024


class LoaderError(ValueError):
    """The file cannot be turned into text; the message says why and what to do.

    `code` names the kind of problem for the API's error body (``encrypted_pdf``, …)."""

    def __init__(self, message: str, code: str = "unreadable") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Limits:
    """Bounds on the work one document may cause."""

    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES
    max_nesting_depth: int = 512
    max_pages: int = 5000
    max_extracted_chars: int = 20_000_000
    ocr: Literal["auto", "off", "always"] = "auto"
    # Spreadsheets are cut into sections of whole rows that fit one chunk, each led by the header.
    chunk_size: int = 1000
    # OCR is the slowest work a document can ask for (about a second a page): these keep one
    # scanned document from occupying the parser for longer than the parse timeout could allow.
    max_ocr_pages: int = 500
    ocr_page_timeout_s: float = 30.0
    # Pixels decoded for one image or one rendered page: a 300 dpi A3 scan is 17 M.
    max_image_pixels: int = 50_000_000

    @classmethod
    def of(cls, settings: IngestSettings) -> Limits:
        """The limits a deployment configured (RAGTUNE_MAX_*), for the upload check and the parser alike."""
        return cls(
            settings.max_uncompressed_bytes,
            settings.max_nesting_depth,
            settings.max_pages,
            settings.max_extracted_chars,
            ocr=settings.ocr,
            chunk_size=settings.chunk_size,
        )


def nesting_error(name: str, limits: Limits) -> LoaderError:
    return LoaderError(
        f"{name} nests elements deeper than {limits.max_nesting_depth} levels (RAGTUNE_MAX_NESTING_DEPTH)",
        "nesting_limit",
    )


def chars_error(name: str, limits: Limits) -> LoaderError:
    return LoaderError(
        f"{name} yields more than {limits.max_extracted_chars} characters of text (RAGTUNE_MAX_EXTRACTED_CHARS)",
        "text_limit",
    )


Load = Callable[[bytes, str, Limits], tuple[str, list[Section]]]  # (data, file name, limits) -> (title, sections)
Check = Callable[[bytes, str, Limits], None]  # raises LoaderError; cheap enough to run on upload


@dataclass(frozen=True)
class Format:
    """One supported format. Binary formats are recognised by their bytes (a `magic` prefix or a
    `zip_member`); text formats by their extension (and HTML also by its doctype)."""

    name: str  # how people and error messages call it: "pdf"
    content_type: str
    extensions: tuple[str, ...]
    load: Load
    check: Check
    magic: tuple[bytes, ...] = ()
    zip_member: str = ""
    misnamed: str = ""  # why a file with this extension but other bytes is refused
    label: str = ""  # what a person calls a file of it, where the name would not do: "Word document"

    @property
    def binary(self) -> bool:
        return bool(self.magic or self.zip_member)


def check_archive(data: bytes, name: str, limits: Limits, kind: str) -> None:
    """Refuses a zip bomb by inflating every member in blocks and counting the real bytes
    (a member's declared size can lie), stopping at the limit; memory stays at one block.
    Only an archive that passes is given to the format's library, which inflates members whole."""
    declared_total = inflated = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            declared_total = sum(info.file_size for info in infos)
            if declared_total <= limits.max_uncompressed_bytes:
                for info in infos:
                    with archive.open(info) as member:
                        while block := member.read(_BLOCK):
                            inflated += len(block)
                            if inflated > limits.max_uncompressed_bytes:
                                break
                    if inflated > limits.max_uncompressed_bytes:
                        break
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        EOFError,
        OSError,
        ValueError,
        RuntimeError,
        zlib.error,
    ) as exc:
        # zipfile raises BadZipFile on a CRC or size mismatch (a header that lies), RuntimeError
        # on an encrypted member and zlib.error on corrupt deflate data
        raise LoaderError(f"{name} is a damaged zip/{kind.upper()} archive ({exc})", f"damaged_{kind}") from exc
    if declared_total > limits.max_uncompressed_bytes or inflated > limits.max_uncompressed_bytes:
        size = f"{declared_total} bytes" if declared_total > limits.max_uncompressed_bytes else "more bytes"
        raise LoaderError(
            f"{name} would decompress to {size}, over the limit of "
            f"{limits.max_uncompressed_bytes} (RAGTUNE_MAX_UNCOMPRESSED_BYTES)",
            "decompression_limit",
        )


def normalise(text: str) -> str:
    """Line endings unified, runs of blanks and blank lines collapsed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# A title that is a file name ("launch.html" from a browser's print to PDF, "Microsoft Word -
# report.docx", "C:\\docs\\notes.txt") names the file the document was made from, not the document.
_FILE_NAME_TITLE = re.compile(
    r"\.(?:html?|xhtml|php|aspx?|pdf|docx?|dotx?|odt|rtf|txt|md|markdown|pptx?|xlsx?|csv|tex|dvi|e?ps|indd|"
    r"pages|key|numbers|xml|json|jpe?g|png|gif|tiff?|bmp|svg|qxd|pub|wpd)$",
    re.IGNORECASE,
)
_PLACEHOLDER_TITLES = frozenset({"untitled", "untitled document", "no title", "title"})


def metadata_title(value: object) -> str:
    """A title read from a file's metadata, or "" where it is no real title (empty, a placeholder,
    or a file name), so the loader falls back to what it would use without one.

    >>> metadata_title("Operations guide"), metadata_title("launch.html"), metadata_title("Microsoft Word - plan.docx")
    ('Operations guide', '', '')
    >>> metadata_title("Node.js in production"), metadata_title("Release 2.0"), metadata_title("Untitled")
    ('Node.js in production', 'Release 2.0', '')
    """
    title = " ".join(str(value or "").split())
    if title.lower() in _PLACEHOLDER_TITLES or _FILE_NAME_TITLE.search(title):
        return ""
    return title


# UTF-32 first: its little-endian BOM starts with UTF-16's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def bom_encoding(data: bytes) -> str | None:
    """The UTF-16/32 encoding announced by a byte order mark, or None."""
    return next((encoding for bom, encoding in _BOMS if data.startswith(bom)), None)


def decode_text(data: bytes, name: str) -> str:
    encoding = bom_encoding(data)
    try:
        if encoding is not None:
            return data.decode(encoding)  # the codec reads the BOM for the byte order
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if encoding is not None:
            raise LoaderError(
                f"{name} starts with a {encoding.upper()} byte order mark but is not valid {encoding.upper()} "
                f"(offset {exc.start})",
                "invalid_encoding",
            ) from exc
        raise LoaderError(
            f"{name} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert it first, e.g. `iconv -f latin1 -t utf-8`",
            "invalid_encoding",
        ) from exc


def check_text(data: bytes, name: str, limits: Limits) -> None:
    decode_text(data, name)
