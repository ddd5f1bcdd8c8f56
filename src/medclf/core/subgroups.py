"""Performance by subgroup: the figures of a labelled part for every value of every slice column the user names
(site, sex, age band, note type; never model inputs), each with a bootstrap interval and its gap to the whole part,
as reporting guidelines for clinical prediction models (TRIPOD+AI, CONSORT-AI) ask.

Two rules, stated in every output that carries slices:
- privacy: a value seen fewer than `min_count` times (default 10) in the part being reported is folded into
  "(other)" before anything is computed or written, so a rare site or age band cannot single a patient out; a
  missing cell is the value "(missing)", folded by the same rule.
- too small to judge: a slice (folded ones included) with fewer than `min_rows` rows (default 30) is listed with
  its row count and the reason, and no figures: an interval over a handful of texts is too wide to act on.

Figures per slice: single-label accuracy and macro-F1, multi-label micro- and macro-F1; both ECE and macro ROC-AUC
(one-vs-rest; classes or labels absent from a slice or a resample are left out of the mean, as in the whole-part
tables). Paired percentile bootstrap intervals (metrics.percentile_bootstrap, the one the test part's intervals use)
of the decision figures and AUC; for ECE the range a perfectly calibrated model with the slice's probabilities would
show (calibrated_ece_range), because ECE is biased upward on few rows and its bootstrap interval can miss its own
point (measured on the abstracts: a slice's ECE 0.050 with a percentile interval 0.058-0.145 and BCa 0.032-0.041). Written here rather than taken from fairlearn's MetricFrame: that computes per-group metrics
but no intervals, no folding of rare values and no judging rule, and would add a dependency for a group-by.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from medclf.core.figures import Interval, SliceRow, Subgroups
from medclf.core.labels import MISSING

if TYPE_CHECKING:
    from medclf.core.tasks import Task

OTHER = "(other)"
MIN_COUNT = 10
"""Values seen fewer times than this in the part reported are folded into OTHER."""
ECE_BLOCK = 50
"""Consistency resamples drawn at a time (the same random stream as all at once)."""
MIN_ROWS = 30
"""Slices with fewer rows than this are named, with their row count, and not judged."""
SINGLE_SLICE_KEYS = ("accuracy", "macro_f1", "ece", "auc")
MULTI_SLICE_KEYS = ("micro_f1", "macro_f1", "ece", "auc")
DEFERRAL_KEYS = ("coverage", "auto_precision")
"""With a deferral rule: the share of the slice decided automatically and the precision of those decisions."""


def slice_keys(task: Task, *, deferral: bool = False) -> tuple[str, ...]:
    return (MULTI_SLICE_KEYS if task.multi_label else SINGLE_SLICE_KEYS) + (DEFERRAL_KEYS if deferral else ())


def fold_rare(values: list[str], min_count: int = MIN_COUNT) -> list[str]:
    """Each row's value, with values seen fewer than min_count times in `values` replaced by OTHER."""
    counts = Counter(values)
    return [v if counts[v] >= min_count else OTHER for v in values]


def rule_text(min_count: int, min_rows: int) -> str:
    return (f"values seen fewer than {min_count} times in the part reported are folded into '{OTHER}' (a missing cell "
            f"is '{MISSING}'); a slice with fewer than {min_rows} rows is listed with its row count and not judged")


def _auc_macro(onehot: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC-AUC over the columns with both outcomes present (rank formula; ties count half, as roc_auc_score)."""
    from scipy.stats import rankdata

    positives = onehot.sum(axis=0)
    usable = (positives > 0) & (positives < len(onehot))
    if not usable.any():
        return float("nan")
    ranks = rankdata(scores[:, usable], axis=0)
    pos = positives[usable]
    auc = ((ranks * onehot[:, usable]).sum(axis=0) - pos * (pos + 1) / 2) / (pos * (len(onehot) - pos))
    return float(auc.mean())


def slice_figures_fn(task: Task, y: np.ndarray, probs: np.ndarray, decided: np.ndarray,
                     routed: tuple[np.ndarray, np.ndarray] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """idx -> the slice figures (slice_keys order) of the rows idx: the decision figures, ECE and macro AUC; with
    `routed` (core.deferral.routing: the texts a deferral rule decides, the share of each text's decisions that are
    right), the share decided automatically and the precision of those decisions."""
    from medclf.core.calibration import ECE_BINS
    from medclf.core.metrics import decision_figures_fn

    decisions = decision_figures_fn(y, decided, multi_label=task.multi_label)
    if task.multi_label:
        onehot = np.asarray(y, dtype=float)
        outcome = onehot
    else:
        onehot = np.eye(probs.shape[1])[np.asarray(y, dtype=int)]
        outcome = (probs.argmax(axis=1) == np.asarray(y)).astype(float)
    confidence, bins = _confidence_bins(task, probs)

    def figures(idx: np.ndarray) -> np.ndarray:
        b, c, o = bins[idx].ravel(), confidence[idx].ravel(), outcome[idx].ravel()
        count = np.bincount(b, minlength=ECE_BINS)
        gap = np.abs(np.bincount(b, weights=o, minlength=ECE_BINS) - np.bincount(b, weights=c, minlength=ECE_BINS))
        ece = float(gap.sum() / max(1, count.sum()))
        out = [*decisions(idx)[:2], ece, _auc_macro(onehot[idx], probs[idx])]
        if routed is not None:
            kept, right = routed[0][idx], routed[1][idx]
            out += [float(kept.mean()), float(right[kept].mean()) if kept.any() else float("nan")]
        return np.asarray(out, dtype=float)

    return figures


def _confidence_bins(task: Task, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities ECE reads (single-label: the top one per text; multi-label: every (text, label) one) and
    their 15 equal-width bins, as core.calibration.reliability bins them."""
    from medclf.core.calibration import ECE_BINS

    confidence = probs if task.multi_label else probs.max(axis=1)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    return confidence, np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, ECE_BINS - 1)


def calibrated_ece_range(task: Task, probs: np.ndarray, *, draws: int, seed: int, level: float) -> tuple[float, float]:
    """The range of ECE a perfectly calibrated model with these probabilities shows on this many rows (consistency
    resampling, Bröcker & Smith 2007: each outcome drawn with its own stated probability). ECE is biased upward on
    few rows, so a bootstrap interval of it sits above the point; this range says which ECE is chance alone."""
    from medclf.core.calibration import ECE_BINS

    confidence, bins = _confidence_bins(task, probs)
    c, b = confidence.ravel(), bins.ravel()
    rng = np.random.default_rng(seed)
    onehot = np.eye(ECE_BINS)[b]  # values x bins
    expected = c @ onehot
    eces = np.concatenate([  # in blocks of draws, so memory stays ~100 x values whatever the number of draws
        np.abs((rng.random((k, len(c))) < c).astype(float) @ onehot - expected).sum(axis=1) / max(1, len(c))
        for k in [min(ECE_BLOCK, draws - i) for i in range(0, draws, ECE_BLOCK)]])
    tail = (1 - level) / 2
    return float(np.quantile(eces, tail)), float(np.quantile(eces, 1 - tail))


def _within(figures: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The figures of resamples of `rows` (positions 0..len(rows)-1 -> those rows)."""
    return lambda i: figures(rows[i])


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def subgroup_figures(
    task: Task, y: np.ndarray, probs: np.ndarray, decided: np.ndarray, slices: dict[str, list[str]], *,
    min_count: int = MIN_COUNT, min_rows: int = MIN_ROWS, seed: int = 0, level: float = 0.95,
    resamples: int | None = None, routed: tuple[np.ndarray, np.ndarray] | None = None,
) -> Subgroups:
    """The figures of every slice of every slice column (each row's value in `slices`), folded and judged by the two
    rules above. `decided`: the task's decisions (class ids or 0/1 rows) at the thresholds the part is reported at;
    `routed`: what the run's deferral rule decides (core.deferral.routing), for each slice's coverage and precision
    of automatic decisions."""
    from medclf.core.metrics import BOOTSTRAP_RESAMPLES, percentile_bootstrap

    resamples = resamples or BOOTSTRAP_RESAMPLES
    keys = slice_keys(task, deferral=routed is not None)
    figures = slice_figures_fn(task, y, probs, decided, routed)

    def clean(values: np.ndarray) -> dict[str, float | None]:
        return {k: None if not np.isfinite(v) else float(v) for k, v in zip(keys, values, strict=True)}

    overall = clean(figures(np.arange(len(y))))
    columns: dict[str, list[SliceRow]] = {}
    for column, raw in slices.items():
        values = fold_rare(list(raw), min_count)
        rows: list[SliceRow] = []
        for value in sorted(set(values), key=lambda v: (v == OTHER, v == MISSING, v)):
            idx = np.flatnonzero(np.asarray(values) == value)
            if len(idx) < min_rows:
                rows.append({"value": value, "n": int(len(idx)), "judged": False,
                             "reason": f"too small to judge: {len(idx)} rows, fewer than {min_rows}"})
                continue
            point = clean(figures(idx))
            low, high = percentile_bootstrap(_within(figures, idx), len(idx), resamples=resamples, seed=seed,
                                             level=level)
            intervals: dict[str, Interval | None] = {
                k: None if point[k] is None or not (np.isfinite(lo) and np.isfinite(hi))
                else {"low": float(lo), "high": float(hi)} for k, lo, hi in zip(keys, low, high, strict=True)}
            ece_low, ece_high = calibrated_ece_range(task, probs[idx], draws=resamples, seed=seed, level=level)
            intervals["ece"] = {"low": ece_low, "high": ece_high}
            rows.append({"value": value, "n": int(len(idx)), "judged": True, "figures": point, "intervals": intervals,
                         "gap": {k: _difference(point[k], overall[k]) for k in keys}})
        columns[column] = rows
    return {"rule": rule_text(min_count, min_rows), "min_count": min_count, "min_rows": min_rows, "level": level,
            "method": f"paired percentile bootstrap (scipy), {resamples} resamples of each slice's rows, seed {seed}; "
                      f"for ECE instead the range a perfectly calibrated model with the slice's probabilities shows "
                      f"({resamples} consistency resamples): an ECE above it is more than chance",
            "keys": list(keys), "overall": overall, "columns": columns}


KEY_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1", "ece": "ECE", "auc": "AUC",
             "coverage": "share decided", "auto_precision": "precision decided"}


def _cell(row: SliceRow, key: str) -> str:
    value = row["figures"][key]
    if value is None:
        return "n/a"
    band = row["intervals"].get(key)
    return f"{value:.3f} ({band['low']:.3f}-{band['high']:.3f})" if band else f"{value:.3f}"


def subgroup_lines(subgroups: Subgroups) -> list[str]:
    """The figures by subgroup as markdown: one table per slice column (a row per value: n, each figure with its
    interval, the gap of the first two to the whole part), then the rules. The report, the card and `evaluate`."""
    keys = subgroups["keys"]
    level = f"{subgroups['level']:.0%}"
    overall = subgroups["overall"]
    lines: list[str] = []
    for column, rows in subgroups["columns"].items():
        head = " | ".join(f"{KEY_NAMES[k]} ({level} {'calibrated range' if k == 'ece' else 'interval'})"
                          + (f" | gap in {KEY_NAMES[k]}" if k in keys[:2] else "") for k in keys)
        lines += [f"| {column} | n | {head} |", "|---|---|" + "---|" * (len(keys) + 2)]
        lines.append("| all | " + str(sum(r["n"] for r in rows)) + " | " + " | ".join(
            ("n/a" if overall[k] is None else f"{overall[k]:.3f}") + (" | " if k in keys[:2] else "") for k in keys)
            + " |")
        for row in rows:
            if not row["judged"]:
                lines.append(f"| {row['value']} | {row['n']} | {row.get('reason', 'not judged')} |"
                             + " |" * (len(keys) + 1))
                continue
            cells = []
            for k in keys:
                cells.append(_cell(row, k))
                if k in keys[:2]:
                    gap = row["gap"][k]
                    cells.append("n/a" if gap is None else f"{gap:+.3f}")
            lines.append(f"| {row['value']} | {row['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"Rules: {subgroups['rule']}. Intervals: {subgroups['method']}.")
    return lines


def worse_slices(subgroups: Subgroups, key: str = "macro_f1") -> list[str]:
    """The judged slices whose whole interval lies below the whole part's figure, as 'column = value 0.61
    (0.55-0.67)': where the model is shown to work less well (the card's known limits)."""
    whole = subgroups["overall"].get(key)
    out = []
    for column, rows in subgroups["columns"].items():
        for row in rows:
            band = row.get("intervals", {}).get(key) if row["judged"] else None
            if whole is not None and band is not None and band["high"] < whole:
                out.append(f"{column} = {row['value']} {row['figures'][key]:.3f} ({band['low']:.3f}-{band['high']:.3f})")
    return out
