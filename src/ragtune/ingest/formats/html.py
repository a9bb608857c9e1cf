"""HTML and Markdown: sections split at headings, the heading trail kept ("Setup > Linux").

Markdown is rendered to HTML first (CommonMark with tables, by markdown-it-py, whose work
grows linearly with the text: python-markdown's link parsing is quadratic in unclosed
brackets, 37 s for 20,000 ``[`` and hours for 1 MB), then read like HTML."""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, NavigableString
from lxml import etree
from markdown_it import MarkdownIt

from ragtune.ingest.formats.base import (
    Format,
    Limits,
    check_text,
    decode_text,
    metadata_title,
    nesting_error,
    normalise,
)
from ragtune.types import Section

_FEED = 64 * 1024


def check_html_depth(html: str, name: str, limits: Limits) -> None:
    """A streaming pass (libxml2, no tree kept) that stops at the nesting limit, before
    BeautifulSoup, whose work grows with depth × size, ever sees the document."""
    parser = etree.HTMLPullParser(events=("start", "end"), huge_tree=True)
    depth = 0
    for start in range(0, len(html), _FEED):
        parser.feed(html[start : start + _FEED])
        for event, element in parser.read_events():
            if event == "start":
                depth += 1
                if depth > limits.max_nesting_depth:
                    raise nesting_error(name, limits)
            else:
                depth -= 1
                element.clear()  # keep memory flat: the tree is not needed
    parser.close()


# A line's nesting in Markdown: each ">" opens a blockquote, each 2+ columns of indent before
# a list marker may open a list level (the parser recurses once per level).
_MD_PREFIX = re.compile(r"[ \t>]*")


def check_markdown_depth(text: str, name: str, limits: Limits) -> None:
    for line in text.split("\n"):
        prefix = _MD_PREFIX.match(line)
        if prefix is None or prefix.end() < limits.max_nesting_depth:
            continue
        marks = prefix.group()
        if marks.count(">") + len(marks.expandtabs(4).replace(">", "")) // 2 > limits.max_nesting_depth:
            raise nesting_error(name, limits)


def render_markdown(text: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(text)


def load_html(data: bytes, name: str, limits: Limits) -> tuple[str, list[Section]]:
    html = decode_text(data, name)
    check_html_depth(html, name, limits)
    return html_sections(html)


def load_markdown(data: bytes, name: str, limits: Limits) -> tuple[str, list[Section]]:
    text = decode_text(data, name)
    check_markdown_depth(text, name, limits)
    html = render_markdown(text)
    check_html_depth(html, name, limits)
    return html_sections(html)


_HEADING_TAGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
_HEADING_MARK = "\x1eH"  # a record separator no real document text contains


def html_sections(html: str) -> tuple[str, list[Section]]:
    soup = BeautifulSoup(html, "lxml")
    title = metadata_title(soup.title.get_text(" ", strip=True)) if soup.title else ""
    for tag in soup(["head", "script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    for tag in soup.find_all(_HEADING_TAGS):
        level = int(tag.name[1])
        tag.replace_with(NavigableString(f"\n{_HEADING_MARK}{level} {tag.get_text(' ', strip=True)}\n"))
    for tag in soup.find_all(["p", "div", "pre", "blockquote", "section", "article", "table", "ul", "ol"]):
        tag.insert_after(NavigableString("\n\n"))
    for tag in soup.find_all(["li", "br", "tr", "dt", "dd"]):
        tag.insert_after(NavigableString("\n"))
    text = soup.get_text()

    sections: list[Section] = []
    trail: list[tuple[int, str]] = []  # the open headings, outermost first
    lines: list[str] = []

    def flush() -> None:
        sections.append(Section(normalise("\n".join(lines)), heading=" > ".join(h for _, h in trail)))
        lines.clear()

    for line in text.split("\n"):
        if line.startswith(_HEADING_MARK):
            flush()
            mark, _, heading = line[len(_HEADING_MARK) :].partition(" ")
            level = int(mark)
            trail = [(lvl, h) for lvl, h in trail if lvl < level] + [(level, heading.strip())]
        else:
            lines.append(line)
    flush()
    first_heading = next((s.heading.split(" > ")[0] for s in sections if s.heading), "")
    return title or first_heading, sections


HTML = Format("html", "text/html", (".html", ".htm"), load_html, check_text)
MARKDOWN = Format("md", "text/markdown", (".md", ".markdown"), load_markdown, check_text)
