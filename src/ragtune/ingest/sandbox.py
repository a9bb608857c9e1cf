"""Parse and chunk one document in a child process whose time and memory are bounded.

The in-format limits (nesting, pages, characters, decompression) refuse the hostile
documents we know of cheaply; this is the bound that holds whatever a document contains.
The child is a fresh interpreter (``python -c``, not multiprocessing: the parent has threads,
so no fork, and "spawn" would import the parent's ``__main__`` again, which fails in a script
without a ``__main__`` guard). It limits its own address space with ``RLIMIT_AS`` (to what its
loaded parsers map plus ``parse_max_memory_mb``) and is reused across documents; the parent
waits at most ``parse_timeout_s`` for each answer, kills a child that runs past it or dies, and
starts a fresh one for the next document. The child exits by itself when the socket to its
parent closes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ragtune.ingest.chunking import chunk_document
from ragtune.ingest.formats import Limits, LoaderError
from ragtune.ingest.loaders import load_bytes
from ragtune.types import NO_LABELS, Chunk, Labels, LoadedDocument

STARTUP_TIMEOUT_S = 120.0
Parsed = tuple[LoadedDocument, list[Chunk]]
# (data, source, limits, chunk_size, chunk_overlap, labels, doc_id) -> (document, chunks); module-level, so picklable
Target = Callable[[bytes, str, Limits, int, int, Labels, str], Parsed]


def parse_document(
    data: bytes, source: str, limits: Limits, chunk_size: int, chunk_overlap: int, labels: Labels, doc_id: str
) -> Parsed:
    doc = load_bytes(data, source, limits)
    return doc, chunk_document(doc, chunk_size, chunk_overlap, labels, doc_id)


def serve(fd: int) -> None:
    """The child's loop on the socket `fd`: first (max_memory_mb, target), then one request in,
    one ("ok", result) | ("error", message, code) | ("memory",) out; it exits after a
    MemoryError (its heap is not to be trusted after one)."""
    import resource

    conn = Connection(fd)
    max_memory_mb, target = conn.recv()

    # The parsers' own code is loaded before the limit: it bounds the parse.
    import docx  # noqa: F401
    import openpyxl  # noqa: F401
    import pdfplumber  # noqa: F401
    import pptx  # noqa: F401
    import pypdf  # noqa: F401
    import pypdfium2  # noqa: F401
    import pytesseract  # noqa: F401

    limit = _address_space() + max_memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(("ready",))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        name = Path(request[1]).name
        try:
            conn.send(("ok", target(*request)))
        except MemoryError:
            conn.send(("memory",))
            return
        except LoaderError as exc:
            conn.send(("error", str(exc), exc.code))
        except RecursionError:
            conn.send(("error", f"{name} nests too deeply to parse (RAGTUNE_MAX_NESTING_DEPTH)", "nesting_limit"))
        except Exception as exc:  # a parser's bug on a hostile file is this document's failure only
            conn.send(("error", f"{name} could not be parsed ({type(exc).__name__}: {exc})", "unreadable"))


def _address_space() -> int:
    """This process's mapped address space in bytes (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class BoundedParser:
    """Runs `target` (by default load + chunk) for one document at a time in a child process."""

    def __init__(self, timeout_s: float, max_memory_mb: int, target: Target = parse_document) -> None:
        self.timeout_s, self.max_memory_mb, self.target = timeout_s, max_memory_mb, target
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    def parse(
        self,
        data: bytes,
        source: str,
        limits: Limits,
        chunk_size: int,
        chunk_overlap: int,
        labels: Labels = NO_LABELS,
        doc_id: str = "",
    ) -> Parsed:
        name = Path(source).name
        with self._lock:
            conn = self._child()
            try:
                conn.send((data, source, limits, chunk_size, chunk_overlap, labels, doc_id))
                ready = conn.poll(self.timeout_s)
                reply: Any = conn.recv() if ready else None
            except (EOFError, OSError):  # the child died mid-document
                self._stop()
                raise self._memory_error(name, died=True) from None
            if reply is None:
                self._stop()
                raise LoaderError(
                    f"{name} took longer than {self.timeout_s:g} s to parse (RAGTUNE_PARSE_TIMEOUT_S)", "parse_timeout"
                )
            if reply[0] == "ok":
                return reply[1]
            if reply[0] == "memory":
                self._stop()
                raise self._memory_error(name)
            raise LoaderError(reply[1], reply[2])

    def _memory_error(self, name: str, died: bool = False) -> LoaderError:
        how = "stopped the parser process; it may have needed" if died else "needed"
        return LoaderError(
            f"{name} {how} more than {self.max_memory_mb} MiB to parse (RAGTUNE_PARSE_MAX_MEMORY_MB)", "parse_memory"
        )

    def _child(self) -> Connection:
        if self._process is not None and self._conn is not None and self._process.poll() is None:
            return self._conn
        self._stop()
        parent_end, child_end = socket.socketpair()
        # The parent's import path, so the child finds ragtune (and a test's target) as the parent does.
        path = os.pathsep.join(entry for entry in sys.path if entry)
        process = subprocess.Popen(
            [sys.executable, "-c", f"from ragtune.ingest.sandbox import serve; serve({child_end.fileno()})"],
            pass_fds=(child_end.fileno(),),
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
        child_end.close()
        conn = Connection(parent_end.detach())
        self._process, self._conn = process, conn
        try:  # a child's start-up (imports) is not the document's parse time
            conn.send((self.max_memory_mb, self.target))
            if conn.poll(STARTUP_TIMEOUT_S) and conn.recv() == ("ready",):
                return conn
        except (EOFError, OSError):
            pass
        self._stop()
        raise LoaderError("the document parser process did not start; see the server's log", "parser_unavailable")

    def _stop(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait(5)

    def close(self) -> None:
        with self._lock:
            self._stop()


_shared: dict[tuple[float, int], BoundedParser] = {}
_shared_lock = threading.Lock()


def shared_parser(timeout_s: float, max_memory_mb: int) -> BoundedParser:
    """One parser per process and limits, shared by every Ingestor (and thread) in it."""
    with _shared_lock:
        key = (timeout_s, max_memory_mb)
        if key not in _shared:
            _shared[key] = BoundedParser(timeout_s, max_memory_mb)
        return _shared[key]


def close_shared() -> None:
    """Stops every shared parser's child (a later parse starts a fresh one)."""
    with _shared_lock:
        parsers = list(_shared.values())
    for parser in parsers:
        parser.close()
