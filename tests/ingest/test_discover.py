import os
import threading
from pathlib import Path

import pytest

from ragtune.ingest.indexer import discover

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symlinks")


def _discover(roots: list[Path], **kwargs) -> tuple[list[Path], list[tuple[str, str]]]:
    skipped: list[tuple[str, str]] = []
    found: list[Path] = []

    def run() -> None:
        found.extend(discover(roots, skipped=skipped, **kwargs))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "discover hung"
    return found, skipped


def test_fifos_are_skipped_in_folders_and_reported_when_named(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "good.md").write_text("# Good\n\ntext")
    os.mkfifo(root / "pipe.md")
    os.mkfifo(root / "pipe.txt.unsupported")
    found, skipped = _discover([root])
    assert found == [root / "good.md"]
    assert skipped == [(str(root / "pipe.md"), "not a regular file (a FIFO); skipped")]
    found, skipped = _discover([root / "pipe.md"])
    assert found == [] and skipped and "FIFO" in skipped[0][1]


def test_links_out_of_the_folder_are_not_followed_unless_asked(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("secret")
    (outside / "more.md").write_text("more")
    root = tmp_path / "docs"
    root.mkdir()
    (root / "own.md").write_text("own")
    (root / "inner.md").symlink_to(root / "own.md")  # a link inside the folder is fine
    (root / "secret.md").symlink_to(outside / "secret.md")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    found, skipped = _discover([root])
    assert found == [root / "inner.md", root / "own.md"]
    assert [s for s, _ in skipped] == [str(root / "secret.md")] and "--follow-links" in skipped[0][1]
    found, skipped = _discover([root], follow_links=True)
    assert sorted(found) == sorted(
        [
            root / "inner.md",
            root / "own.md",
            root / "secret.md",
            root / "linked" / "more.md",
            root / "linked" / "secret.md",
        ]
    )
    assert skipped == []


def test_link_loops_end(tmp_path):
    root = tmp_path / "docs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.md").write_text("x")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "self.md").symlink_to(root / "self.md")  # a link to itself
    for follow in (False, True):
        found, skipped = _discover([root], follow_links=follow)
        assert found == [root / "a" / "x.md"], follow
        assert all("self.md" in s for s, _ in skipped)
