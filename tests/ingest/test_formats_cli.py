"""The new formats end to end through `ragtune ingest`: slides, sheets, images and a scan are
indexed and answer questions; with RAGTUNE_OCR=off the scan is refused as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builders import image_bytes, pptx_bytes, requires_tesseract, text_image, xlsx_bytes
from conftest import cli_environment
from ragtune.ingest.formats import CSV, PDF, PNG, PPTX, XLSX

pytestmark = [pytest.mark.slow, requires_tesseract]


def ragtune(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = cli_environment(data_dir, **env)
    return subprocess.run(
        [sys.executable, "-m", "ragtune.cli", *args], capture_output=True, text=True, env=environment, timeout=300
    )


def test_ingest_indexes_slides_sheets_images_and_scans(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "deck.pptx").write_bytes(pptx_bytes([("Launch plan", "The launch is on the ninth of May.", "Smile.")]))
    (docs / "stock.xlsx").write_bytes(xlsx_bytes({"Stock": [["Part", "Bin"], ["Flange", "B7"], ["Gasket", "C2"]]}))
    (docs / "people.csv").write_bytes(b"name,desk\nAnn,4.12\nBob,2.03\n")
    (docs / "note.png").write_bytes(image_bytes([text_image(["The ferry leaves at noon."])]))
    (docs / "scan.pdf").write_bytes(image_bytes([text_image(["Boarding closes ten minutes before."])], "PDF"))
    data = tmp_path / "data"

    result = ragtune(["ingest", str(docs), "--json"], data, RAGTUNE_OCR="auto")
    assert result.returncode == 0, result.stderr
    assert sorted(Path(p).name for p in json.loads(result.stdout)["indexed"]) == [
        "deck.pptx",
        "note.png",
        "people.csv",
        "scan.pdf",
        "stock.xlsx",
    ]
    listing = json.loads(ragtune(["documents", "--json"], data).stdout)["documents"]
    assert {Path(d["source"]).name: d["content_type"] for d in listing} == {
        "deck.pptx": PPTX.content_type,
        "note.png": PNG.content_type,
        "people.csv": CSV.content_type,
        "scan.pdf": PDF.content_type,
        "stock.xlsx": XLSX.content_type,
    }
    for question, source in [
        ("When does the ferry leave?", "note.png"),
        ("When does boarding close?", "scan.pdf"),
        ("Which bin holds the gasket?", "stock.xlsx"),
    ]:
        answer = ragtune(["ask", question, "--json", "--mode", "bm25"], data)
        assert answer.returncode == 0, answer.stderr
        citation = json.loads(answer.stdout)["citations"][0]
        assert Path(citation["source"]).name == source, (question, citation)

    off = tmp_path / "off"
    result = ragtune(["ingest", str(docs / "scan.pdf"), "--json"], off, RAGTUNE_OCR="off")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [(source, message)] = json.loads(result.stdout)["failed"]
    assert Path(source).name == "scan.pdf" and "no extractable text" in message and "RAGTUNE_OCR=auto" in message
