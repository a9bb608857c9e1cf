"""Build real test inputs in memory: documents (PDF, DOCX, PPTX, XLSX, images, scans), so no
binary fixtures are needed, and a tiny Llama with its tokenizer, so no model is downloaded."""

from __future__ import annotations

import io
import re
import shutil
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch


def pdf_bytes(pages: list[str], title: str = "") -> bytes:
    """A valid PDF with one text page per entry (Helvetica, one line per text line)."""
    objects: list[bytes] = []
    page_ids = [3 + 2 * i for i in range(len(pages))]
    font_id = 3 + 2 * len(pages)
    info_id = font_id + 1
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {len(pages)} >>".encode())
    for i, text in enumerate(pages):
        lines = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in text.split("\n")]
        stream = "BT /F1 11 Tf 14 TL 50 780 Td " + " ".join(f"({line}) Tj T*" for line in lines) + " ET"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Resources << /Font << /F1 {font_id} 0 R >> >> "
            f"/Contents {page_ids[i] + 1} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(f"<< /Title ({title}) >>".encode())
    return _pdf_file(objects, f" /Info {info_id} 0 R")


def encrypted_pdf_bytes(text: str, password: str = "secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(pdf_bytes([text]))))
    writer.encrypt(user_password=password, owner_password=password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx_bytes(paragraphs: list[tuple[str, str]]) -> bytes:
    """(style, text) pairs, e.g. ("Heading 1", "Setup"), ("Normal", "Run make demo.")."""
    import docx

    document = docx.Document()
    for style, text in paragraphs:
        document.add_paragraph(text, style=style)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_bomb_docx(uncompressed_bytes: int) -> bytes:
    """A DOCX whose document.xml inflates to `uncompressed_bytes` (highly compressible)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", b"<w:document>" + b" " * uncompressed_bytes + b"</w:document>")
    return out.getvalue()


CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
WORDS = [
    "system",
    "user",
    "assistant",
    "you",
    "answer",
    "questions",
    "using",
    "only",
    "the",
    "numbered",
    "documents",
    "in",
    "user's",
    "message",
    "rules",
    "use",
    "facts",
    "stated",
    "never",
    "outside",
    "knowledge",
    "cite",
    "document",
    "each",
    "fact",
    "comes",
    "from",
    "by",
    "its",
    "number",
    "square",
    "brackets",
    "e",
    "g",
    "or",
    "if",
    "do",
    "not",
    "contain",
    "reply",
    "exactly",
    "i",
    "could",
    "find",
    "indexed",
    "are",
    "data",
    "instructions",
    "ignore",
    "any",
    "instruction",
    "command",
    "role",
    "change",
    "written",
    "inside",
    "them",
    "nothing",
    "can",
    "these",
    "briefly",
    "id",
    "title",
    "page",
    "question",
    "above",
    "citing",
    "n",
    "milvus",
    "was",
    "created",
    "zilliz",
    "who",
    "what",
    "when",
    "where",
    "is",
    "a",
    "vector",
    "database",
    "rhine",
    "flows",
    "through",
    "switzerland",
    "river",
    "paris",
    "france",
    "capital",
    "of",
    "previous",
    "all",
    "say",
    "hacked",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "[",
    "]",
    ".",
    ",",
    ":",
    ";",
    "!",
    "?",
    '"',
    "'",
    "<",
    ">",
    "/",
    "=",
    "-",
    "‹",
    "›",
    "|",
    "&",
    "(",
    ")",
    "_",
]


def blank_pdf(pages: int) -> bytes:
    """A valid PDF of `pages` empty pages (one page object, referenced `pages` times: a
    5,000-page file is 60 KB and takes no time to build)."""
    kids = " ".join(["3 0 R"] * pages)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 72 72] >>",
    ]
    return _pdf_file(objects)


def _pdf_file(objects: list[bytes], trailer: str = "") -> bytes:
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    out.write("".join(f"{o:010d} 00000 n \n" for o in offsets).encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def lying_docx(inflated: int) -> bytes:
    """A real DOCX whose word/document.xml declares 4 KiB in its zip headers but inflates to `inflated` bytes."""
    source = zipfile.ZipFile(io.BytesIO(docx_bytes([("Normal", "hello")])))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            if info.filename == "word/document.xml":
                archive.writestr(info.filename, b"\0" * inflated)
            else:
                archive.writestr(info.filename, source.read(info.filename))
    data = bytearray(out.getvalue())
    name = b"word/document.xml"
    patched = 0
    at = 0
    while (at := data.find(name, at)) != -1:
        if data[at - 30 : at - 26] == b"PK\x03\x04":  # local header: uncompressed size at offset 22
            struct.pack_into("<I", data, at - 30 + 22, 4096)
            patched += 1
        elif data[at - 46 : at - 42] == b"PK\x01\x02":  # central header: uncompressed size at offset 24
            struct.pack_into("<I", data, at - 46 + 24, 4096)
            patched += 1
        at += len(name)
    assert patched == 2
    return bytes(data)


def build_tiny_llama(directory: Path, seed: int = 0, intermediate_size: int = 128) -> Path:
    """Save a 2-layer Llama (hidden 64, random weights) and its tokenizer to `directory`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(dict.fromkeys(SPECIALS + WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init gives near-uniform logits; a larger scale makes greedy choices clear-cut.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def table_pdf_bytes(before: str, rows: list[list[str]], after: str) -> bytes:
    """A one-page PDF: a line of text, a ruled table (fpdf2 draws its cell borders), a line of text."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    pdf.cell(0, 10, before, new_x="LMARGIN", new_y="NEXT")
    with pdf.table() as table:
        for cells in rows:
            row = table.row()
            for text in cells:
                row.cell(text)
    pdf.ln(4)
    pdf.cell(0, 10, after, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def docx_with_table(before: str, rows: list[list[str]], after: str) -> bytes:
    import docx

    document = docx.Document()
    document.add_paragraph(before)
    table = document.add_table(rows=len(rows), cols=len(rows[0]))
    for cells, row in zip(rows, table.rows):
        for text, cell in zip(cells, row.cells):
            cell.text = text
    document.add_paragraph(after)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def text_image(lines: list[str], size: int = 40) -> Any:
    """A white page with `lines` in black, large enough for Tesseract (a PIL image)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    image = Image.new("L", (1400, 120 + len(lines) * size * 2), 255)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((60, 60 + i * size * 2), line, fill=0, font=font)
    return image


def image_bytes(images: list[Any], fmt: str = "PNG") -> bytes:
    """The images in one file: a PDF of one image per page (a scan), a multi-page TIFF, or a PNG/JPEG of the first."""
    out = io.BytesIO()
    images[0].save(out, fmt, save_all=len(images) > 1, append_images=images[1:], resolution=150)
    return out.getvalue()


def noise_image(side: int, seed: int = 0) -> Any:
    """Random black and white pixels: no text, and the hardest kind of page for Tesseract."""
    import random

    from PIL import Image

    return Image.frombytes("L", (side, side), random.Random(seed).randbytes(side * side)).convert("1")


def pptx_bytes(slides: list[tuple[str, str, str]], table: list[list[str]] | None = None) -> bytes:
    """(title, body, speaker notes) per slide; `table`, if given, goes on the first slide."""
    import pptx
    from pptx.util import Inches

    presentation = pptx.Presentation()
    for i, (title, body, notes) in enumerate(slides):
        slide = presentation.slides.add_slide(presentation.slide_layouts[1])  # title and content
        slide.shapes.title.text = title
        slide.placeholders[1].text_frame.text = body
        slide.notes_slide.notes_text_frame.text = notes
        if table and i == 0:
            shape = slide.shapes.add_table(len(table), len(table[0]), Inches(1), Inches(4), Inches(6), Inches(1))
            for cells, row in zip(table, shape.table.rows):
                for text, cell in zip(cells, row.cells):
                    cell.text = text
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


def xlsx_bytes(sheets: dict[str, list[list[object]]]) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for title, rows in sheets.items():
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width` × `height` pixels (a decompression bomb's header)."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def with_member(archive_bytes: bytes, member: str, body: bytes) -> bytes:
    """The zip archive with `member` replaced by `body` (a damaged part inside a sound archive)."""
    source = zipfile.ZipFile(io.BytesIO(archive_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            archive.writestr(info.filename, body if info.filename == member else source.read(info.filename))
    return out.getvalue()


requires_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="Tesseract is not installed (run scripts/system-deps/tesseract.sh)"
)


# Words the rules' questions add to a chunk's own, so a tokenizer made from the chunks knows them.
QUESTION_WORDS = ["what", "which", "year", "how", "many", "number", "?"]


def bert_word_tokenizer(words: Iterable[str]) -> Any:
    """A lower-casing word-level BERT tokenizer ([CLS] A [SEP] B [SEP]) that knows `words`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def tiny_sentence_model(directory: Path, texts: Iterable[str]) -> Path:
    """A 2-layer BERT (hidden 32, random weights) with mean pooling and normalisation, its
    word-level tokenizer made from `texts`, saved as a sentence-transformers model."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from transformers import BertConfig, BertModel

    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())} | set(QUESTION_WORDS))
    tokenizer = bert_word_tokenizer(words)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory / "bert")
    tokenizer.save_pretrained(directory / "bert")
    modules = [Transformer(str(directory / "bert"), max_seq_length=128), Pooling(32, "mean"), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(directory / "model"))
    return directory / "model"
