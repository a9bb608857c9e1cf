"""Two results of ``ragtune eval … --json`` side by side, with the differences (`ragtune eval compare`).

Every scalar of the two reports is a row, nested ones by dotted name (``baseline_bm25s.ndcg@10``,
``settings.rrf_k``), in the first report's order; lists (examples) are left out. A number in
both gets its difference, B − A; any other value that differs (the dataset, the mode, the
generator) is marked changed, so the table says what changed between the runs as well as what
it did to the numbers. Both files must be results of the same kind of evaluation.

    >>> a = {"dataset": "q/holdout", "mode": "hybrid", "recall@5": 0.8, "ndcg@10": 0.7}
    >>> b = {"dataset": "q/holdout", "mode": "bm25", "recall@5": 0.9, "ndcg@10": 0.7}
    >>> print(format_table(compare_results(a, b), "a.json", "b.json"))
    metric    a.json     b.json     B − A
    dataset   q/holdout  q/holdout
    mode      hybrid     bm25       changed
    recall@5  0.8        0.9        +0.1000
    ndcg@10   0.7        0.7        0
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

# A result's kind, by the metrics only that kind reports.
KINDS: dict[str, tuple[str, ...]] = {
    "retrieval": ("ndcg@10", "recall@5", "mrr@10"),
    "answers": ("exact_match", "f1", "citation_support"),
    "conversations": ("condensed_r@5", "verbatim_r@5"),
}


class ResultError(ValueError):
    """A file that is not a ragtune eval result; the message names it."""


def result_kind(result: dict[str, Any]) -> str | None:
    """``retrieval``, ``answers`` or ``conversations``; None for anything else."""
    for kind, metrics in KINDS.items():
        if any(isinstance(result.get(m), int | float) for m in metrics):
            return kind
    return None


def load_result(path: Path) -> dict[str, Any]:
    """The eval result in `path`; ResultError when it is missing, not JSON or not a result."""
    if not path.is_file():
        raise ResultError(f"{path}: no such file; give two files written by ragtune eval … --json")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ResultError(f"{path} is not a text file; give a file written by ragtune eval … --json") from None
    except json.JSONDecodeError as exc:
        raise ResultError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(result, dict) or "dataset" not in result or result_kind(result) is None:
        raise ResultError(
            f"{path} is not a ragtune eval result: expected the JSON object that "
            "ragtune eval retrieval|answers|conversations --json prints"
        )
    return result


def flatten(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalars by dotted name; lists left out."""
    flat: dict[str, Any] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif not isinstance(value, list):
            flat[name] = value
    return flat


@dataclass(frozen=True)
class Row:
    name: str
    a: Any
    b: Any
    difference: float | None  # B − A when both are numbers
    changed: bool


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compare_results(a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    flat_a, flat_b = flatten(a), flatten(b)
    rows = []
    for name in [*flat_a, *(k for k in flat_b if k not in flat_a)]:
        value_a, value_b = flat_a.get(name), flat_b.get(name)
        difference = round(value_b - value_a, 4) if _number(value_a) and _number(value_b) else None
        rows.append(Row(name, value_a, value_b, difference, value_a != value_b))
    return rows


def compare_files(path_a: Path, path_b: Path) -> list[Row]:
    """The rows of two result files of the same kind; ResultError otherwise."""
    a, b = load_result(path_a), load_result(path_b)
    kind_a, kind_b = result_kind(a), result_kind(b)
    if kind_a != kind_b:
        raise ResultError(
            f"{path_a} measures {kind_a} and {path_b} measures {kind_b}; compare two results of the same kind"
        )
    return compare_results(a, b)


def _cell(value: Any) -> str:
    return "—" if value is None else str(value)


def _difference(row: Row) -> str:
    if row.difference is not None:
        return f"{row.difference:+.4f}" if row.difference else "0"
    return "changed" if row.changed else ""


def format_table(rows: list[Row], name_a: str, name_b: str) -> str:
    """A plain-text table: metric, A, B and B − A, in columns."""
    lines = [("metric", name_a, name_b, "B − A")] + [(r.name, _cell(r.a), _cell(r.b), _difference(r)) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join(f"{n:{widths[0]}}  {x:{widths[1]}}  {y:{widths[2]}}  {d}".rstrip() for n, x, y, d in lines)
