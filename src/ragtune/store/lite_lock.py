"""`LiteLock`: Milvus Lite opens a data path from one process only; the lock file next to the
data says which process holds it, so a second one is refused with a message naming it.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from ragtune.store.lite_lock import LiteLock
    >>> lock = LiteLock(Path(tempfile.mkdtemp()) / "milvus.db")
    >>> lock.path.read_text().startswith("pid ")
    True
    >>> lock.release()
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from ragtune.store.base import StoreLockedError


class LiteLock:
    """Milvus Lite opens a data path from one process only; say who holds it, not just that."""

    def __init__(self, data_path: Path) -> None:
        self.path = data_path.with_name(data_path.name + ".owner")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self._fd)
            raise StoreLockedError(
                f"the Milvus Lite data at {data_path} is in use by {owner}. Milvus Lite allows one "
                "process per data path: stop that process, or talk to it (e.g. the API of a running "
                "`ragtune serve`), or use a Milvus server (RAGTUNE_MILVUS_URI=http://host:19530)"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} ({' '.join(sys.argv)[:300]})".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = -1
