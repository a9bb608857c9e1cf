"""What a `ragtune tune …` run measured, and whether its model may replace the live one.

A run measures the held-out split before and after training, with the same retrieval and
decoding, and writes both to ``report.json``. `decide` promotes only when the main metric
improves and no other metric gets worse by more than a margin (absolute, in the metric's
own units: 0.01 is one point of nDCG or F1):

    >>> report = TuneReport("embedder", "/models/e1", "ndcg@10",
    ...                     before={"ndcg@10": 0.80, "recall@5": 0.90},
    ...                     after={"ndcg@10": 0.83, "recall@5": 0.895})
    >>> decide(report, margin=0.01).promote
    True
    >>> decide(report, margin=0.001).reasons
    ['recall@5 fell by 0.0050 (0.9000 -> 0.8950), more than the margin 0.0010']
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

TuneKind = Literal["embedder", "answerer"]

# Metrics where a smaller value is the better one; every other metric is better when larger.
LOWER_IS_BETTER = frozenset({"false_abstentions"})


class ReportError(ValueError):
    """A report file that is missing, unreadable or not a ragtune tuning report."""


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]  # why not, or what improved


@dataclass
class TuneReport:
    kind: TuneKind
    model: str  # the embedder's model directory, or the answerer's LoRA adapter directory
    main_metric: str
    before: dict[str, float]
    after: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)  # training, data and settings, as each kind reports them
    decision: Decision | None = None
    promoted: bool = False

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @staticmethod
    def read(path: Path) -> TuneReport:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ReportError(f"cannot read the report {path}: {exc}") from None
        if not isinstance(raw, dict) or raw.get("kind") not in ("embedder", "answerer"):
            raise ReportError(f"{path} is not a ragtune tuning report (no kind embedder or answerer)")
        try:
            decision = raw.pop("decision", None)
            report = TuneReport(**raw)
        except TypeError as exc:
            raise ReportError(f"{path} is not a ragtune tuning report ({exc})") from None
        report.decision = Decision(**decision) if decision else None
        return report


def change(metric: str, before: float, after: float) -> float:
    """How much better `after` is than `before` (negative: worse), whatever the metric's direction."""
    return before - after if metric in LOWER_IS_BETTER else after - before


def decide(report: TuneReport, margin: float = 0.01, min_gain: float = 0.0) -> Decision:
    """Promote when the main metric gains more than `min_gain` and no metric falls by more than `margin`."""
    if margin < 0 or min_gain < 0:
        raise ValueError(f"margin and min_gain must be >= 0; got margin={margin}, min_gain={min_gain}")
    if report.main_metric not in report.before or report.main_metric not in report.after:
        return Decision(False, [f"the main metric {report.main_metric} was not measured both before and after"])
    reasons = []
    gain = change(report.main_metric, report.before[report.main_metric], report.after[report.main_metric])
    if gain <= min_gain:
        reasons.append(
            f"{report.main_metric} did not improve by more than {min_gain:.4f} "
            f"({report.before[report.main_metric]:.4f} -> {report.after[report.main_metric]:.4f})"
        )
    for metric in sorted(set(report.before) & set(report.after)):
        before, after = report.before[metric], report.after[metric]
        if metric != report.main_metric and change(metric, before, after) < -margin:
            reasons.append(
                f"{metric} {'rose' if metric in LOWER_IS_BETTER else 'fell'} by {abs(after - before):.4f} "
                f"({before:.4f} -> {after:.4f}), more than the margin {margin:.4f}"
            )
    if reasons:
        return Decision(False, reasons)
    return Decision(
        True,
        [
            f"{report.main_metric} improved {report.before[report.main_metric]:.4f} -> "
            f"{report.after[report.main_metric]:.4f}; no metric fell by more than {margin:.4f}"
        ],
    )
