"""The web UI: one static page; its ES modules, styles and icon are served from /ui/."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from ragtune.ingest.formats import accept_attribute, supported_names

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> HTMLResponse:
    """The page, its file picker and help text filled in from the format registry."""
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{accept}}", accept_attribute()).replace("{{formats}}", supported_names())
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})
