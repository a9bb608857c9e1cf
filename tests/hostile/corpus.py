"""A corpus of hostile files, generated on demand (nothing binary is committed).

Each `Hostile` is a name as a client would send it, its bytes, and what must become of
it: ``indexed`` (a good file, or an attack on the name that sanitising defuses), or
``refused`` with a fragment its message must hold (the limit's setting, or the reason).
The same corpus goes through the CLI's folder walk and through ``POST /v1/documents``;
names that cannot exist on disk (a slash, a NUL, over 255 bytes) are HTTP-only, and the
disk-only attacks (a FIFO, a link out of the folder) are added by the CLI test.
"""

from __future__ import annotations

import codecs
import zipfile
from dataclasses import dataclass
from functools import cache
from io import BytesIO

from builders import blank_pdf, docx_bytes, encrypted_pdf_bytes, lying_docx, pdf_bytes, zip_bomb_docx

MiB = 1024 * 1024


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    expect: str  # "indexed" or "refused"
    mentions: str = ""  # for "refused": a fragment of the message, the same on both paths
    attack: str = ""

    @property
    def on_disk(self) -> bool:
        return (
            "/" not in self.name and "\\" not in self.name and "\0" not in self.name and len(self.name.encode()) < 250
        )


def good_text(topic: str) -> str:
    return f"# {topic}\n\nThe {topic} runbook says to page the on-call engineer before changing anything.\n"


def _billion_laughs_docx() -> bytes:
    """A Word document whose document.xml defines nested entities (an XML bomb)."""
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    )
    bomb = (
        f'<?xml version="1.0"?><!DOCTYPE w:document [{entities}]>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        "<w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p></w:body></w:document>"
    )
    source = zipfile.ZipFile(BytesIO(docx_bytes([("Normal", "hello")])))
    out = BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            body = bomb.encode() if info.filename == "word/document.xml" else source.read(info.filename)
            archive.writestr(info.filename, body)
    return out.getvalue()


def _non_word_zip() -> bytes:
    out = BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "not a word document")
    return out.getvalue()


@cache
def corpus() -> tuple[Hostile, ...]:
    good = [
        Hostile("plain.txt", good_text("backup").encode(), "indexed"),
        Hostile("guide.md", good_text("failover").encode(), "indexed"),
        Hostile(
            "page.html",
            f"<html><body><h1>Rotation</h1><p>{good_text('rotation')}</p></body></html>".encode(),
            "indexed",
        ),
        Hostile("manual.pdf", pdf_bytes(["The restore drill runs every quarter."]), "indexed"),
        Hostile(
            "memo.docx", docx_bytes([("Heading 1", "Memo"), ("Normal", "The vault key rotates yearly.")]), "indexed"
        ),
        Hostile("utf16.txt", codecs.BOM_UTF16_LE + good_text("utf16").encode("utf-16-le"), "indexed", attack="UTF-16"),
        Hostile("utf32.md", codecs.BOM_UTF32_BE + good_text("utf32").encode("utf-32-be"), "indexed", attack="UTF-32"),
        Hostile("pdf-named.txt", pdf_bytes(["A PDF that says it is text."]), "indexed", attack="content-type lie"),
        Hostile("\u202etxt.md", good_text("override").encode(), "indexed", attack="RTL override in the name"),
        Hostile(
            "re\u0301sume\u0301 \u05e9\u05dc\u05d5\u05dd.md",
            good_text("combining").encode(),
            "indexed",
            attack="combining and RTL",
        ),
        Hostile("x" * 240 + ".md", good_text("long name").encode(), "indexed", attack="240-character name"),
        # Names only HTTP can carry: each is reduced to its last printable component.
        Hostile("../../traversal.txt", good_text("traversal").encode(), "indexed", attack="path traversal"),
        Hostile("/etc/absolute.txt", good_text("absolute").encode(), "indexed", attack="absolute path"),
        Hostile("C:\\Windows\\system32\\windows.md", good_text("windows").encode(), "indexed", attack="Windows path"),
        Hostile("nul\0byte.txt", good_text("nul").encode(), "indexed", attack="NUL in the name"),
        # Quadratic for python-markdown (hours), linear for markdown-it: bounded, so indexed.
        Hostile("brackets.md", b"[" * 500_000 + b"x" + b"]" * 500_000, "indexed", attack="1 MB of nested brackets"),
    ]
    depth = 2_000_000  # "<div>" * 2M: 10 MB
    bad = [
        Hostile(
            "deep.html",
            b"<html><body>" + b"<div>" * depth + b"</div>" * depth + b"</body></html>",
            "refused",
            "RAGTUNE_MAX_NESTING_DEPTH",
            "10 MB of nested divs",
        ),
        Hostile(
            "lists.md",
            "".join("  " * i + "- item\n" for i in range(700)).encode() * 2,
            "refused",
            "RAGTUNE_MAX_NESTING_DEPTH",
            "nested lists",
        ),
        Hostile(
            "quotes.md", b"> " * 500_000 + b"deep", "refused", "RAGTUNE_MAX_NESTING_DEPTH", "1 MB of nested quotes"
        ),
        Hostile("blank.pdf", blank_pdf(5000), "refused", "no extractable text", "5,000 blank pages"),
        Hostile("lying.docx", lying_docx(1024 * MiB), "refused", "", "1 GiB inflated behind a 4 KiB header"),
        Hostile("bomb.docx", zip_bomb_docx(1024 * MiB), "refused", "RAGTUNE_MAX_UNCOMPRESSED_BYTES", "honest zip bomb"),
        Hostile("laughs.docx", _billion_laughs_docx(), "refused", "entity amplification", "billion laughs"),
        Hostile("line.txt", b"x" * (40 * MiB), "refused", "", "one 40 MB line"),
        Hostile("locked.pdf", encrypted_pdf_bytes("secret"), "refused", "encrypted PDF"),
        Hostile("truncated.pdf", pdf_bytes(["Half a document."])[:300], "refused", "PDF"),
        Hostile("html.pdf", b"<html><body>not a pdf</body></html>", "refused", "does not start with %PDF-"),
        Hostile("archive.docx", _non_word_zip(), "refused", "not a Word document"),
        Hostile("broken.docx", b"PK\x03\x04garbage", "refused", "damaged zip"),
        Hostile("elf.txt", b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 600, "refused", "binary file"),
        Hostile("latin1.txt", "café au lait".encode("latin-1"), "refused", "not valid UTF-8"),
        Hostile("empty.md", b"", "refused", "is empty"),
        Hostile("blank.txt", b" \n\t\n ", "refused", "is empty"),
        Hostile("script.html", b"<html><body><script>steal()</script></body></html>", "refused", "no text"),
        Hostile("notes.exe", good_text("exe").encode(), "refused", "is named .exe", "unknown extension"),
        Hostile("README", good_text("readme").encode(), "refused", "has no file extension", "no extension"),
        # HTTP only: a part header over python-multipart's 4 KiB is a 400 naming the reason.
        Hostile(
            "n" * 5000 + ".md",
            good_text("very long name").encode(),
            "refused",
            "Maximum header size",
            "5,000-character name",
        ),
    ]
    return tuple(good + bad)
