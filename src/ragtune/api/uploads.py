"""Uploads: check each file before it is queued, so a bad one is a clear 4xx now, not a failed job later.

The type is decided from the bytes (`detect_content_type`), never from the client's
Content-Type; the client's file name is reduced to its last component and becomes part of
the document source (``uploads/<name>``): it is never a path on disk, so ``../../etc/passwd``
is the document ``uploads/passwd``. Uploading a file of the same name again replaces that
document. The checks are the cheap ones (type, encoding, decompressed size, PDF structure and
encryption); a file that passes them and still fails to parse is reported by its job.

    >>> from ragtune.api.uploads import safe_filename
    >>> safe_filename("../../etc/passwd"), safe_filename("C:\\\\Users\\\\me\\\\notes.md"), safe_filename("..")
    ('passwd', 'notes.md', 'upload')
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from ragtune.api.errors import ApiError
from ragtune.config import Settings
from ragtune.ingest.chunking import document_id
from ragtune.ingest.loaders import DOCX, PDF, LoaderError, decode_text, detect_content_type
from ragtune.store.jobs import NewFile

UPLOAD_PREFIX = "uploads/"
_MAX_NAME = 200


def safe_filename(name: str) -> str:
    """The last path component of `name`, printable characters only, no leading dots."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip().lstrip(".").strip()
    return base[-_MAX_NAME:] or "upload"


@dataclass(frozen=True)
class CheckedUpload:
    file: NewFile
    content_type: str


def check_upload(data: bytes, filename: str, settings: Settings) -> CheckedUpload:
    """Raises ApiError (413, 415 or 422, naming the file and the fix) for a file that
    cannot be indexed; returns it ready to queue otherwise."""
    name = safe_filename(filename)
    if len(data) > settings.service.max_upload_bytes:
        raise ApiError(
            413,
            "file_too_large",
            f"{name} is {len(data)} bytes, over the upload limit of {settings.service.max_upload_bytes} bytes "
            "(RAGTUNE_MAX_UPLOAD_BYTES); split it or raise the limit",
        )
    if not data.strip():
        raise ApiError(422, "empty_file", f"{name} is empty: there is no text to index")
    try:
        content_type = detect_content_type(data, name)
    except LoaderError as exc:
        raise ApiError(415, "unsupported_type", f"{exc}. Supported: txt, md, html, pdf and docx") from None
    if content_type == DOCX:
        _check_docx(data, name, settings.ingest.max_uncompressed_bytes)
    elif content_type == PDF:
        _check_pdf(data, name)
    else:
        try:
            decode_text(data, name)
        except LoaderError as exc:
            raise ApiError(422, "invalid_encoding", str(exc)) from None
    source = UPLOAD_PREFIX + name
    return CheckedUpload(NewFile(filename=name, source=source, doc_id=document_id(source), data=data), content_type)


def _check_docx(data: bytes, name: str, limit: int) -> None:
    # The zip directory declares every member's inflated size: a zip bomb is refused
    # before anything is decompressed.
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        declared = sum(info.file_size for info in archive.infolist())
    if declared > limit:
        raise ApiError(
            413,
            "decompression_limit",
            f"{name} would decompress to {declared} bytes, over the limit of {limit} (RAGTUNE_MAX_UNCOMPRESSED_BYTES)",
        )


def _check_pdf(data: bytes, name: str) -> None:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ApiError(422, "encrypted_pdf", f"{name} is an encrypted PDF; upload a decrypted copy")
        if len(reader.pages) == 0:
            raise ApiError(422, "empty_pdf", f"{name} has no pages")
    except ApiError:
        raise
    except Exception as exc:  # pypdf raises many kinds on hostile files; each means "damaged"
        if "decrypt" in str(exc).lower():
            raise ApiError(422, "encrypted_pdf", f"{name} is an encrypted PDF; upload a decrypted copy") from None
        raise ApiError(
            422, "damaged_pdf", f"{name} is a damaged or truncated PDF ({type(exc).__name__}: {exc}); re-export it"
        ) from None
