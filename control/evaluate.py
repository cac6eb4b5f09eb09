"""`metertwin evaluate DIR`: score the detectors against the ground truth of a history.

For each anomaly kind (`twin.anomaly.anomaly_scores`) and each theft kind (h1..h6 and
bypass, each judged by the one combined "theft" score of `twin.theft`), over meter-days:

- positives: the meter-days a ground-truth window of that kind overlaps
  (`twin.detect.truth_days`);
- negatives: the meter-days of the columns the detector scores (a column with at least one
  score) that no ground-truth window of any kind overlaps. Meter-days under another
  injection are left out of both sides: a stuck register hides energy exactly as a theft
  does, and which detector should name it is a matter of kind, not of error;
- a NaN score ranks below every score and is never flagged (`twin.metrics`).

Figures: precision and recall at the detector's own threshold, ROC AUC, detection rate at
5% false positives (the share of positives above the 95th-percentile negative), and the
median days from onset to the first flagged day over the injected windows (with how many
were flagged at all). `--also-daily` scores the same history again as a daily-reading site
without master meters (`twin.detect.downsample_daily`) and prints the two side by side.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twin.detect import DayScores, DetectView, downsample_daily, load_view, truth_days
from twin.history import HistoryError, TruthEvent, read_ground_truth
from twin.metrics import days_to_detect, median_or_nan, precision_recall, rate_at_fpr, roc_auc

THEFT_KINDS = ("h1", "h2", "h3", "h4", "h5", "h6", "bypass")
#: Thefts that change a day's total (h5 and h6 only rearrange the day): what one reading a
#: day can show at all.
TOTAL_KINDS = ("h1", "h2", "h3", "h4", "bypass")
TOTALS_ROW = "theft (totals)"
FPR = 0.05
#: printed under the tables: what each column means (the --json file carries the same figures by field name)
LEGEND = f"""\
columns:
  kind      the injected kind (theft h1-h6, bypass, leak, offline...); 'theft (all)' is every theft kind
            together, and 'theft (totals)' those that change a day's total (h1-h4, bypass)
  detector  the score that judged the kind
  pos       positives: meter-days inside an injected window of the kind
  neg       negatives: meter-days with no injection, on meters that were scored
  prec      precision at the detector's own threshold: of the flagged meter-days, the share truly injected
  recall    recall at the detector's own threshold: of the positive meter-days, the share flagged
  AUC       ROC area: the chance a positive meter-day scores above a negative one (0.5 is chance, 1 perfect)
  @{FPR:.0%}FP     detection rate with the threshold set so {FPR:.0%} of the negative meter-days are flagged
  days      median days from a window's start to its first flagged day, over the windows found
  found     injected windows flagged on at least one of their days / all injected windows of the kind
  -         no figure: nothing to count (no positives, or no window found)"""

EXAMPLES = """\
examples:
  metertwin simulate scenarios/demo-theft.toml --days 30 --seed 7 --out out/theft
  metertwin evaluate out/theft --also-daily
  metertwin evaluate out/theft --interval daily --no-masters --json daily.json

Prints one row per anomaly and theft kind: positives and negatives (meter-days), precision
and recall at the detector's threshold, ROC AUC, detection rate at 5% false positives, and
median days to detect (injections flagged / injected). The theft kinds are each scored by
the one combined theft score; "theft (all)" pools them, "theft (totals)" pools the kinds
that change a day's total (h1-h4, bypass; h5 and h6 need sub-daily data). Needs
DIR/ground_truth.csv."""


@dataclass
class KindFigures:
    """The figures of one kind on one view."""

    kind: str  #: injection kind, or "theft (all)"
    detector: str  #: the DayScores kind that judged it
    positives: int  #: meter-days inside a window of the kind
    negatives: int  #: meter-days with no injection, in scored columns
    precision: float  #: at the detector's threshold
    recall: float  #: at the detector's threshold
    auc: float  #: ROC AUC over meter-days
    rate_at_5pct: float  #: detection rate at 5% false positives
    median_days_to_detect: float  #: onset to first flagged day, over the windows flagged
    windows: int  #: injected windows of the kind on scored columns
    windows_flagged: int  #: of those, flagged on some day of the window


def _figures(kind: str, scores: DayScores, positive: np.ndarray, negative: np.ndarray, view: DetectView,
             truth: list[TruthEvent], kinds: tuple[str, ...]) -> KindFigures:
    s = scores.scores
    sel = positive | negative
    flagged = scores.flagged()
    precision, recall = precision_recall(flagged[sel], positive[sel])
    index = {c: i for i, c in enumerate(view.topology.ids)}
    scored = np.isfinite(s).any(axis=1)
    delays: list[float] = []
    windows = 0
    for e in truth:
        col = index.get(e.twin, -1)
        if e.kind not in kinds or col < 0 or not scored[col]:
            continue
        days = np.flatnonzero(truth_days(view, [e], e.kind)[col])
        if not days.size:
            continue
        windows += 1
        delays.append(days_to_detect(flagged[col], int(days[0]), int(days[-1])))
    return KindFigures(kind, scores.kind, int(positive.sum()), int(negative.sum()), precision, recall,
                       roc_auc(s[sel], positive[sel]), rate_at_fpr(s[sel], positive[sel], FPR),
                       median_or_nan(delays), windows, sum(not math.isnan(d) for d in delays))


def evaluate_view(view: DetectView, truth: list[TruthEvent], progress: bool = True) -> list[KindFigures]:
    """Figures for every anomaly kind and theft kind on one view."""
    detectors: dict[str, DayScores] = {}
    anomaly_scores = optional_anomaly_scores()
    if anomaly_scores is not None:
        _say(progress, "scoring anomalies")
        detectors.update(anomaly_scores(view))
    from twin.theft import theft_scores

    _say(progress, "scoring theft")
    theft = theft_scores(view)["theft"]
    kinds_seen = sorted({e.kind for e in truth})
    any_truth = np.zeros((view.matrix.shape[0], view.n_days), dtype=np.bool_)
    for kind in kinds_seen:
        any_truth |= truth_days(view, truth, kind)
    out: list[KindFigures] = []
    for kind, scores in detectors.items():
        positive = truth_days(view, truth, kind)
        applies = np.isfinite(scores.scores).any(axis=1)[:, None]
        out.append(_figures(kind, scores, positive & applies, applies & ~any_truth, view, truth, (kind,)))
    applies = np.isfinite(theft.scores).any(axis=1)[:, None]
    negative = applies & ~any_truth
    pooled = np.zeros_like(negative)
    for kind in THEFT_KINDS:
        positive = truth_days(view, truth, kind) & applies
        pooled |= positive
        out.append(_figures(kind, theft, positive, negative, view, truth, (kind,)))
    out.append(_figures("theft (all)", theft, pooled, negative, view, truth, THEFT_KINDS))
    totals = np.zeros_like(negative)
    for kind in TOTAL_KINDS:
        totals |= truth_days(view, truth, kind) & applies
    out.append(_figures(TOTALS_ROW, theft, totals, negative, view, truth, TOTAL_KINDS))
    return out


def optional_anomaly_scores() -> Any:
    """twin.anomaly.anomaly_scores, or None where that module is not installed."""
    try:
        module = importlib.import_module("twin.anomaly")
    except ImportError:
        return None
    return module.anomaly_scores


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"evaluate: {text}", file=sys.stderr, flush=True)


def _f(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def render(title: str, rows: list[KindFigures]) -> str:
    """One view's figures as a text table."""
    head = f"{'kind':<18}{'detector':<18}{'pos':>6}{'neg':>7}{'prec':>7}{'recall':>7}{'AUC':>7}" \
           f"{'@5%FP':>7}{'days':>6}{'found':>8}"
    lines = [title, head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.kind:<18}{r.detector:<18}{r.positives:>6}{r.negatives:>7}{_f(r.precision, 2):>7}"
                     f"{_f(r.recall, 2):>7}{_f(r.auc):>7}{_f(r.rate_at_5pct, 2):>7}"
                     f"{_f(r.median_days_to_detect, 1):>6}{f'{r.windows_flagged}/{r.windows}':>8}")
    return "\n".join(lines)


def render_side_by_side(names: list[str], views: list[list[KindFigures]]) -> str:
    """The theft kinds' AUC and rate at 5% false positives, one column pair per view."""
    head = f"{'theft kind':<14}" + "".join(f"{n + ' AUC':>22}{'@5%FP':>8}" for n in names)
    lines = [head, "-" * len(head)]
    for kind in (*THEFT_KINDS, "theft (all)", TOTALS_ROW):
        cells = ""
        for rows in views:
            r = next(x for x in rows if x.kind == kind)
            cells += f"{_f(r.auc):>22}{_f(r.rate_at_5pct, 2):>8}"
        lines.append(f"{kind:<14}{cells}")
    if any(n.startswith("daily") for n in names):
        lines.append("daily: h5 and h6 keep the day's total, which is all one reading a day shows; "
                     f"read '{TOTALS_ROW}' (h1-h4, bypass) there")
    return "\n".join(lines)


def drop_masters(view: DetectView) -> DetectView:
    """The view without its master meters (at its own interval)."""
    from dataclasses import replace

    from twin.history import Topology

    keep = [i for i, c in enumerate(view.topology.columns) if c.role != "master"]
    columns = [replace(view.topology.columns[i], master=None) for i in keep]
    topology = Topology(view.topology.site, view.topology.timezone, view.topology.interval_s, columns)
    remap = {old: new for new, old in enumerate(keep)}
    events = [replace(e, column=remap.get(e.column, -1)) for e in view.events]
    return DetectView(np.ascontiguousarray(view.matrix[keep]), topology, view.calendar, events)


def _label(view: DetectView, masters: bool) -> str:
    step = view.topology.interval_s
    name = "daily" if step == 86400 else (f"{step // 60}min" if step < 3600 else f"{step // 3600}h")
    return name if masters else f"{name}, no masters"


def run_evaluate(directory: str, interval: str | None = None, no_masters: bool = False, also_daily: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Evaluate the history in `directory`; returns {label: [KindFigures as dict]} plus the text."""
    path = Path(directory)
    if not (path / "topology.json").exists():
        raise HistoryError(f"{directory}: not a history directory (no topology.json; see docs/history-format.md)")
    if not (path / "ground_truth.csv").exists():
        raise HistoryError(f"{directory}: no ground_truth.csv, so there is nothing to score against")
    t0 = time.perf_counter()
    _say(progress, f"reading {directory}")
    base = load_view(directory)
    truth = read_ground_truth(directory)
    views: list[tuple[str, DetectView]] = []
    if interval == "daily":
        views.append((_label(downsample_daily(base, drop_masters=no_masters), not no_masters),
                      downsample_daily(base, drop_masters=no_masters)))
    else:
        first = drop_masters(base) if no_masters else base
        views.append((_label(first, not no_masters), first))
        if also_daily:
            views.append(("daily, no masters", downsample_daily(base, drop_masters=True)))
    results: dict[str, list[KindFigures]] = {}
    for label, view in views:
        _say(progress, f"view {label}: {view.matrix.shape[0]} columns x {view.n_days} days")
        results[label] = evaluate_view(view, truth, progress)
    text = "\n\n".join(render(f"{directory} ({label})", rows) for label, rows in results.items())
    if len(results) > 1:
        text += "\n\n" + render_side_by_side(list(results), list(results.values()))
    text += "\n\n" + LEGEND
    _say(progress, f"done in {time.perf_counter() - t0:.1f}s")
    return {"dir": str(directory), "fpr": FPR,
            "views": {label: [asdict(r) for r in rows] for label, rows in results.items()}, "text": text}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The `evaluate` subcommand."""
    try:
        report = run_evaluate(args.dir, args.interval, args.no_masters, args.also_daily, progress=not args.quiet)
    except (HistoryError, OSError, ValueError) as e:
        print(f"metertwin evaluate: {e}", file=sys.stderr)
        return 2
    print(report["text"])
    if args.json:
        body = {k: v for k, v in report.items() if k != "text"}
        Path(args.json).write_text(json.dumps(body, indent=1, default=_plain) + "\n")
        _say(not args.quiet, f"wrote {args.json}")
    return 0


def _plain(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register `evaluate` on the CLI's subcommands."""
    p = commands.add_parser(
        "evaluate", help="score the anomaly and theft detectors against a history's ground truth",
        description="Score the detectors against DIR/ground_truth.csv, per anomaly and theft kind, over "
                    "meter-days: precision, recall, ROC AUC, detection rate at 5% false positives, median "
                    "days to detect.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="history directory (docs/history-format.md) with ground_truth.csv")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    p.add_argument("--interval", choices=["native", "daily"], default="native",
                   help="score the history as it is (native, default) or as one reading a day")
    p.add_argument("--no-masters", action="store_true", help="leave the master meters out")
    p.add_argument("--also-daily", action="store_true",
                   help="also score it as one reading a day without master meters, side by side")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=cmd_evaluate)
    return p


__all__ = ["KindFigures", "add_parser", "cmd_evaluate", "drop_masters", "evaluate_view", "optional_anomaly_scores",
           "render", "run_evaluate"]
