"""Uploads: check each file before it is queued, so a bad one is a clear 4xx now, not a failed job later.

The type is decided from the bytes (`detect_format`), never from the client's
Content-Type; the client's file name is reduced to its last component and becomes part of
the document source (``uploads/<name>``): it is never a path on disk, so ``../../etc/passwd``
is the document ``uploads/passwd``. Uploading a file of the same name again replaces that
document. The checks are each format's cheap ones (`Format.check`: encoding, decompressed
size, PDF structure and encryption); a file that passes them and still fails to parse is
reported by its job.

    >>> from ragtune.api.uploads import safe_filename
    >>> safe_filename("../../etc/passwd"), safe_filename("C:\\\\Users\\\\me\\\\notes.md"), safe_filename("..")
    ('passwd', 'notes.md', 'upload')
"""

from __future__ import annotations

from dataclasses import dataclass

from ragtune.api.errors import ApiError
from ragtune.config import Settings
from ragtune.ingest.chunking import document_id
from ragtune.ingest.formats import Limits, LoaderError, supported_names
from ragtune.ingest.loaders import detect_format
from ragtune.store.jobs import NewFile

UPLOAD_PREFIX = "uploads/"
_MAX_NAME = 200
# The HTTP status of each kind of LoaderError an upload check raises; the rest are 422.
_STATUS = {"unsupported_type": 415, "decompression_limit": 413}


def safe_filename(name: str) -> str:
    """The last path component of `name`, printable characters only, no leading dots."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip().lstrip(".").strip()
    return base[-_MAX_NAME:] or "upload"


@dataclass(frozen=True)
class CheckedUpload:
    file: NewFile
    content_type: str


def check_upload(
    data: bytes, filename: str, settings: Settings, size: int | None = None, collection: str = ""
) -> CheckedUpload:
    """Raises ApiError (413, 415 or 422, naming the file and the fix) for a file that
    cannot be indexed; returns it ready to queue otherwise, as a document of `collection`
    (default: the default one). `size` is the file's whole size when known: `data` may be
    only its first limit + 1 bytes."""
    name = safe_filename(filename)
    limit = settings.service.max_upload_bytes
    if len(data) > limit or (size is not None and size > limit):
        # Never the bytes read (limit + 1 at most) as if they were the size: the real size, or only "over".
        if size is not None and size >= len(data):
            how_big = f"{size} bytes, over the upload limit of {limit} bytes"
        else:
            how_big = f"over {limit} bytes, the upload limit"
        raise ApiError(
            413,
            "file_too_large",
            f"{name} is {how_big} (RAGTUNE_MAX_UPLOAD_BYTES); split it or raise the limit",
        )
    try:
        fmt = detect_format(data, name)
        fmt.check(data, name, Limits.of(settings.ingest))
    except LoaderError as exc:
        message = f"{exc}. Supported: {supported_names()}" if exc.code == "unsupported_type" else str(exc)
        raise ApiError(_STATUS.get(exc.code, 422), exc.code, message) from None
    source = UPLOAD_PREFIX + name
    doc_id = document_id(source, collection, settings.store.collection)
    return CheckedUpload(NewFile(filename=name, source=source, doc_id=doc_id, data=data), fmt.content_type)
