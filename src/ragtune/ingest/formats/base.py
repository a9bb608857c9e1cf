"""What a document format is: how to recognise it, check it cheaply and load it into sections."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass

from ragtune.config import IngestSettings
from ragtune.types import Section

DEFAULT_MAX_UNCOMPRESSED_BYTES = 200 * 1024 * 1024


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

    @classmethod
    def of(cls, settings: IngestSettings) -> Limits:
        """The limits a deployment configured (RAGTUNE_MAX_*), for the upload check and the parser alike."""
        return cls(
            settings.max_uncompressed_bytes,
            settings.max_nesting_depth,
            settings.max_pages,
            settings.max_extracted_chars,
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
    """One supported format. Binary formats are recognised by their bytes (`magic` or a
    `zip_member`); text formats by their extension (and HTML also by its doctype)."""

    name: str  # how people and error messages call it: "pdf"
    content_type: str
    extensions: tuple[str, ...]
    load: Load
    check: Check
    magic: bytes = b""
    zip_member: str = ""
    misnamed: str = ""  # why a file with this extension but other bytes is refused

    @property
    def binary(self) -> bool:
        return bool(self.magic or self.zip_member)


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
