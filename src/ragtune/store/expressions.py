r"""Milvus filter expressions for `Filters`, with every value bound safely.

Milvus Lite 2.5 has no expression templates (``filter_params``), so values are written as
literals by the rules here: strings quoted and escaped, numbers and booleans written from
their Python type, metadata keys only of identifier characters. Nothing a user sends is
spliced into an expression raw.

    >>> from ragtune.types import Filters, MetaCondition
    >>> filter_expression(Filters(collections=("finance",), metadata=(MetaCondition("year", "gte", 2023),)))
    'collection in ["finance"] and metadata["year"] >= 2023'
    >>> print(filter_expression(Filters(exclude_doc_ids=('d" or 1==1 or "',))))
    doc_id not in ["d\" or 1==1 or \""]
    >>> print(literal('x" or 1==1 or "'))
    "x\" or 1==1 or \""
"""

from __future__ import annotations

from collections.abc import Iterable

from ragtune.types import METADATA_KEY, Filters, MetaCondition, MetaValue

_COMPARE = {"eq": "==", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def quote(value: str) -> str:
    r"""`value` as a Milvus string literal: backslash and double quote escaped, nothing else.

    Milvus' expression parser undoes ``\\`` and ``\"`` but not JSON's ``\u00e9`` (nor ``\t``),
    so non-ASCII text and control characters are written as themselves (checked against
    Milvus Lite: "résumé", "café", tabs, quotes and backslashes all match; a newline is
    rejected as an invalid expression).
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quoted_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(quote(v) for v in values) + "]"


def literal(value: MetaValue) -> str:
    """`value` as a Milvus literal: strings quoted (`quote`), numbers and booleans written by
    Python from their type, so no value can carry an operator into an expression."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    return quote(str(value))


def _condition(condition: MetaCondition) -> str:
    # Keys are checked where a filter is made (`metadata_conditions`); checked again here, as
    # the one place a key enters an expression.
    if not METADATA_KEY.fullmatch(condition.key):
        raise ValueError(f"metadata key {condition.key[:80]!r} is not allowed in a filter")
    field = f'metadata["{condition.key}"]'
    if condition.op == "in":
        values = condition.value if isinstance(condition.value, tuple) else (condition.value,)
        return f"{field} in [{', '.join(literal(v) for v in values)}]"
    if isinstance(condition.value, tuple):
        raise ValueError(f"metadata filter {condition.key}: {condition.op} takes one value")
    return f"{field} {_COMPARE[condition.op]} {literal(condition.value)}"


def filter_expression(filters: Filters | None) -> str:
    """Milvus' boolean expression for `filters`; values are quoted (`quote`), never spliced in raw."""
    if filters is None:
        return ""
    clauses = []
    if filters.collections:
        clauses.append(f"collection in {quoted_list(filters.collections)}")
    if filters.sources:
        clauses.append(f"source in {quoted_list(filters.sources)}")
    if filters.doc_ids:
        clauses.append(f"doc_id in {quoted_list(filters.doc_ids)}")
    if filters.exclude_doc_ids:
        clauses.append(f"doc_id not in {quoted_list(filters.exclude_doc_ids)}")
    if filters.tags:
        clauses.append(f"ARRAY_CONTAINS_ANY(tags, {quoted_list(filters.tags)})")
    clauses.extend(_condition(c) for c in filters.metadata)
    return " and ".join(clauses)
