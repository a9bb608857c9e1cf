"""YAML front matter of Markdown files: a document's metadata written in the file itself.

A file that starts with a ``---`` line, YAML, and a closing ``---`` (or ``...``) line, as
Jekyll, Hugo, MkDocs and Obsidian write it, has that block read as metadata and removed from
the text that is indexed. Front matter never fails a document: a block that is not a YAML
mapping is left as text, as before there was metadata, and entries that are no metadata by
`check_metadata`'s rules (lists, nested maps, keys like ``last-updated``, values over
`MAX_METADATA_VALUE_CHARS`, keys past `MAX_METADATA_KEYS`) are left out. A date becomes its
ISO text; a folded value loses its final line break.

    >>> text, metadata = split_front_matter("---\\nteam: finance\\nyear: 2024\\n---\\n# Report\\n", "r.md")
    >>> text, metadata
    ('# Report\\n', {'team': 'finance', 'year': 2024})
"""

from __future__ import annotations

import datetime
import re

import yaml

from ragtune.types import MAX_METADATA_KEYS, MetadataError, MetaValue, check_metadata

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.MULTILINE)
_MAX_FRONT_MATTER = 64 * 1024  # YAML is parsed only this far: aliases cannot make it expensive


def split_front_matter(text: str, name: str) -> tuple[str, dict[str, MetaValue]]:
    """(the text without its front matter, the metadata it gave); the text as it was without one."""
    found = _FRONT_MATTER.match(text[: _MAX_FRONT_MATTER + 8])
    if found is None:
        return text, {}
    try:
        parsed = yaml.safe_load(found.group(1))
    except (yaml.YAMLError, ValueError):  # a thematic break that happens to come first, say
        return text, {}
    if not isinstance(parsed, dict):
        return text, {}
    metadata: dict[str, MetaValue] = {}
    for key, value in parsed.items():
        if isinstance(value, datetime.date):
            value = value.isoformat()
        elif isinstance(value, str):
            value = value.strip()
        try:
            metadata.update(check_metadata({key: value}))
        except MetadataError:
            continue
        if len(metadata) == MAX_METADATA_KEYS:
            break
    return text[found.end() :], metadata
