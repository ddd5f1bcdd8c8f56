"""Deferral to a person at a guaranteed precision: a text is decided automatically when its calibrated top
probability is at least a threshold, else it goes to a person; the threshold is the lowest whose automatic
decisions reach precision P with a stated guarantee, chosen on the calibration part (rows nothing else saw).

Multi-label, per label: each label's decision (present or absent, at the run's tuned threshold) has as its score the
calibrated probability that it is right (the label's probability where it is given, one minus it where not); each
label gets its own threshold on that score by the scan below, at level delta / L for L labels (Bonferroni), so that
with probability at least 1 - delta every label's automatic decisions are right at least P of the time at once; a
text is decided when all of its labels are, and goes to a person when any is not. The task owns the scores
(Task.decision_confidence and Task.decisions_right): one column for a single-label run, one per label otherwise,
and everything here reads those columns.

The guarantee: with probability at least 1 - delta over the calibration part, the precision of the automatic
decisions on new texts drawn as the calibration rows were is at least P (Learn then Test: Angelopoulos, Bates,
Candes, Jordan & Lei, "Learn then Test: calibrating predictive algorithms to achieve risk control", Annals of Applied
Statistics 2025; the selective-risk form of Geifman & El-Yaniv, "Selective classification for deep neural networks",
NeurIPS 2017).

How the threshold is chosen: thresholds run down a fixed grid (GRID values from 1 to 1/K). For each, the hypothesis
"the decisions at this threshold have precision below P" is tested on the calibration part by the exact binomial
test: with n calibration texts at or above the threshold and e wrong among them, p = P(Binomial(n, 1 - P) <= e),
which is at most delta exactly when the one-sided Clopper-Pearson upper bound on their error rate at level
1 - delta is at most 1 - P. The scan starts at the threshold the validation part predicts is the easiest to show
(its own errors, scaled to the calibration part's size, give the smallest p) and goes down while each hypothesis
is rejected; it stops at the first that is not (fixed-sequence testing: the chance of any false rejection stays at
most delta, with no correction for the number of thresholds), and the lowest rejected threshold is the run's. The
start comes from the validation part because the order of a fixed sequence must not depend on the rows it tests;
the validation part is disjoint from the calibration part, so the level holds exactly (its being the part that
chose the weights only makes the start less well placed). Started at the top of the grid instead, the first
hypotheses rest on a handful of texts and cannot be rejected (one text cannot show 90% precision): the scan would
stop at once. In simulation (`benchmarks/trust/deferral.py --simulate`: calibrated 5-class models, 300 draws per
setting, delta 0.1) the share of draws whose threshold fell short of P on the whole population was 0.01-0.11 (0.11
within one standard error of 0.1), and the coverage reached 0.71 of texts where the exact population threshold
gives 0.85 (P 0.8, 231 calibration rows, a model of accuracy 0.75); for a weaker model (accuracy 0.58) 0.06 against
0.31: a guarantee on a few hundred rows costs coverage, more so the flatter the model's precision curve.

Where no threshold is rejected, the target cannot be shown on these rows: the run says so in one sentence, keeps no
threshold (every text would go to a person) and still writes. Written here rather than taken from MAPIE, whose
risk controllers run Learn then Test for multi-label precision and recall and for binary thresholds: they fit on an
estimator over features and keep their state as Python objects, where here the score is the stored, calibrated top
probability of a multi-class run, the scan's start comes from another part, and the state is a JSON rule saved in
the run; the binomial tail from scipy is the whole test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medclf.core.figures import ClassDeferral, DeferralFigures, DeferralRule, LabelDeferral, LabelRule
from medclf.core.tasks import Task
from medclf.errors import MedclfError

DELTA = 0.1
GRID = 400
"""Thresholds in the scan, evenly spaced from 1 down to 1/K."""
CURVE_POINTS = 50


@dataclass(frozen=True)
class DeferralRequest:
    """The precision the automatic decisions must reach, and the chance the guarantee may fail."""

    target_precision: float
    delta: float = DELTA

    def __post_init__(self) -> None:
        for name, value in (("target precision", self.target_precision), ("delta", self.delta)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < float(value) < 1.0:
                raise MedclfError(f"The {name} must be a share between 0 and 1 (such as 0.9), got {value!r}.")


def binomial_p(errors: int | np.ndarray, n: int | np.ndarray, error_rate: float) -> np.ndarray:
    """P(Binomial(n, error_rate) <= errors): small when so few errors are unlikely at that error rate (1 where n is 0)."""
    from scipy.stats import binom

    n = np.asarray(n)
    return np.where(n > 0, binom.cdf(errors, n, error_rate), 1.0)


def _kept_counts(confidence: np.ndarray, correct: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each threshold of `grid`: how many texts have a confidence at or above it, and how many of those are wrong."""
    order = np.argsort(-confidence, kind="stable")
    wrong = np.concatenate([[0], np.cumsum(~np.asarray(correct, dtype=bool)[order])])
    kept = np.searchsorted(-confidence[order], -grid, side="right")  # confidence >= threshold
    return kept, wrong[kept]


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, *, target_precision: float, delta: float,
                     lowest: float, order_confidence: np.ndarray, order_correct: np.ndarray) -> LabelRule:
    """The lowest threshold on one decision's confidence whose decisions reach the target precision at level delta,
    by the fixed-sequence scan this module's docstring describes, on the calibration part (`confidence`, `correct`),
    started where the validation part (`order_*`) predicts; grid from 1 down to `lowest` (the lowest confidence a
    decision can have); `threshold` None where no threshold is shown."""
    alpha = 1.0 - target_precision
    grid = np.linspace(1.0, lowest, GRID)
    scale = len(confidence) / max(1, len(order_confidence))
    kept_o, wrong_o = _kept_counts(np.asarray(order_confidence, dtype=float), order_correct, grid)
    predicted = binomial_p(np.floor(wrong_o * scale), np.round(kept_o * scale), alpha)
    start = int(np.argmin(predicted))  # the first minimum: the highest threshold among equals
    kept, wrong = _kept_counts(np.asarray(confidence, dtype=float), correct, grid)
    p = binomial_p(wrong[start:], kept[start:], alpha)
    failed = np.flatnonzero(p > delta)
    passed = len(p) if not len(failed) else int(failed[0])  # the scan stops at the first hypothesis not rejected
    found: LabelRule = {"threshold": None, "tested": min(len(p), passed + 1), "start": float(grid[start]),
                        "p_value": None}
    if passed:
        found["threshold"], found["p_value"] = float(grid[start + passed - 1]), float(p[passed - 1])
    return found


def choose_rule(task: Task, probs: np.ndarray, y: np.ndarray, request: DeferralRequest, *, labels: list[str],
                order_probs: np.ndarray, order_y: np.ndarray, thresholds: np.ndarray | None = None,
                backend: str = "torch", precision: str = "fp32") -> DeferralRule:
    """The run's rule from the calibration part's calibrated probabilities and targets (`probs`, `y`), the scan's
    start placed by the validation part's (`order_*`). Single-label: one threshold on the top probability.
    Multi-label: one per label on the probability of its decision (at the run's `thresholds`), each scanned at level
    delta / n_labels (Bonferroni), so that with probability at least 1 - delta every label's guarantee holds at once.
    backend and precision: what computed the probabilities (the rule holds for them)."""
    confidence, right = task.decision_confidence(probs, thresholds), task.decisions_right(probs, y, thresholds)
    order_conf = task.decision_confidence(order_probs, thresholds)
    order_right = task.decisions_right(order_probs, order_y, thresholds)
    columns = confidence.shape[1]
    lowest = 0.0 if task.multi_label else 1.0 / len(labels)
    found = [choose_threshold(confidence[:, j], right[:, j], target_precision=request.target_precision,
                              delta=request.delta / columns, lowest=lowest, order_confidence=order_conf[:, j],
                              order_correct=order_right[:, j]) for j in range(columns)]
    method = "Learn then Test: fixed-sequence scan, exact binomial test (Clopper-Pearson)"
    rule: DeferralRule = {"target_precision": request.target_precision, "delta": request.delta, "threshold": None,
                          "n_calibration": len(probs), "n_order": len(order_probs), "tested": found[0]["tested"],
                          "start": found[0]["start"], "p_value": found[0]["p_value"], "method": method,
                          "backend": backend, "precision": precision}
    if not task.multi_label:
        rule["threshold"] = found[0]["threshold"]
        return rule
    rule["per_label"] = dict(zip(labels, found, strict=True))
    shown = [f["threshold"] for f in found]
    rule["threshold"] = None if any(t is None for t in shown) else max(t for t in shown if t is not None)
    rule["tested"] = sum(f["tested"] for f in found)
    rule["start"] = rule["p_value"] = None
    rule["method"] = f"{method}, per label at level delta/{columns} (Bonferroni)"
    return rule


def rule_thresholds(rule: DeferralRule, labels: list[str]) -> np.ndarray:
    """The thresholds a rule compares decision_confidence's columns with: one (single-label) or one per label; inf
    where none was shown (those decisions are never automatic)."""
    per_label = rule.get("per_label")
    chosen = [rule["threshold"]] if per_label is None else [per_label[lab]["threshold"] for lab in labels]
    return np.array([math.inf if t is None else t for t in chosen], dtype=float)


def decided_labels(task: Task, probs: np.ndarray, rule: DeferralRule, labels: list[str],
                   thresholds: np.ndarray | None = None) -> np.ndarray:
    """Which of each text's decisions the rule takes automatically, shape as task.decision_confidence; a text is
    decided automatically when all of its row are (`.all(axis=1)`), else it goes to a person."""
    return task.decision_confidence(probs, thresholds) >= rule_thresholds(rule, labels)


def routing(task: Task, probs: np.ndarray, y: np.ndarray, rule: DeferralRule | None, labels: list[str],
            thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(texts decided automatically, the share of each text's decisions that are right) on a labelled part; None
    without a rule. What coverage and realised precision are read from, for the whole part and for each slice."""
    if rule is None:
        return None
    decided = np.asarray(decided_labels(task, probs, rule, labels, thresholds).all(axis=1))
    return decided, np.asarray(task.decisions_right(probs, y, thresholds).mean(axis=1))


def clopper_pearson(hits: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    from scipy.stats import binomtest

    if n == 0:
        return None, None
    ci = binomtest(hits, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def deferral_figures(task: Task, probs: np.ndarray, y: np.ndarray, rule: DeferralRule, labels: list[str],
                     thresholds: np.ndarray | None = None) -> DeferralFigures:
    """On a labelled part: the share decided (coverage), the realised precision of those decisions with its 95%
    Clopper-Pearson interval, the deferral rate per true class (multi-label: per label, among the texts holding it;
    and each label's precision at its own threshold, which its guarantee is about), and the risk-coverage curve."""
    confidence = task.decision_confidence(probs, thresholds)
    right = task.decisions_right(probs, y, thresholds)
    taken = decided_labels(task, probs, rule, labels, thresholds)
    decided = np.asarray(taken.all(axis=1))
    columns = right.shape[1]
    hits, count = int(right[decided].sum()), int(decided.sum()) * columns
    low, high = clopper_pearson(hits, count)
    holds = np.asarray(y, dtype=bool) if task.multi_label else np.eye(len(labels), dtype=bool)[np.asarray(y)]
    per_class: dict[str, ClassDeferral] = {}
    for k, lab in enumerate(labels):
        rows = holds[:, k]
        label_right = right[:, k] if task.multi_label else right[:, 0]
        per_class[lab] = {"n": int(rows.sum()),
                          "deferred": float((~decided[rows]).mean()) if rows.any() else None,
                          "right": float(label_right[rows & decided].mean()) if (rows & decided).any() else None}
    out: DeferralFigures = {"rule": rule, "n": len(y), "decided": int(decided.sum()),
                            "coverage": float(decided.mean()) if len(y) else 0.0,
                            "precision": hits / count if count else None, "low": low, "high": high,
                            "per_class": per_class, "curve": _risk_coverage(confidence.min(axis=1), right.mean(axis=1))}
    if task.multi_label:
        per_label: dict[str, LabelDeferral] = {}
        for k, lab in enumerate(labels):
            n_k, hits_k = int(taken[:, k].sum()), int(right[taken[:, k], k].sum())
            low_k, high_k = clopper_pearson(hits_k, n_k)
            per_label[lab] = {"decided": n_k, "precision": hits_k / n_k if n_k else None, "low": low_k, "high": high_k}
        out["per_label"] = per_label
    return out


def _risk_coverage(score: np.ndarray, right: np.ndarray) -> list[dict[str, float]]:
    """The precision of the most confident share of texts (by their least confident decision), shares 1/n to all."""
    if not len(score):
        return []
    ranked = np.argsort(-score, kind="stable")
    cum_right = np.cumsum(right[ranked])
    points = np.unique(np.linspace(1, len(score), min(CURVE_POINTS, len(score))).astype(int))
    return [{"coverage": float(m / len(score)), "precision": float(cum_right[m - 1] / m),
             "threshold": float(score[ranked[m - 1]])} for m in points]


def rule_sentence(rule: DeferralRule) -> str:
    """What the rule is, or why there is none, in one sentence."""
    target, delta = rule["target_precision"], rule["delta"]
    per_label = rule.get("per_label")
    if per_label is not None:
        return _labels_sentence(rule, per_label)
    if rule["threshold"] is None:
        return (f"Precision {target:.0%} cannot be shown at level {delta} on the {rule['n_calibration']} calibration "
                "rows (no threshold passed the test): every text would go to a person; lower --target-precision, or "
                "keep a larger calibration part (--calibration-size).")
    return (f"Texts whose top probability is at least {rule['threshold']:.3f} are decided automatically, the rest go to "
            f"a person: with probability at least {1 - delta:.0%} over the calibration part, the automatic decisions "
            f"have precision at least {target:.0%} ({rule['method']} on the {rule['n_calibration']} calibration rows).")


SHOWN_LABELS = 10


def _labels_sentence(rule: DeferralRule, per_label: dict[str, LabelRule]) -> str:
    target, delta = rule["target_precision"], rule["delta"]
    missing = [lab for lab, found in per_label.items() if found["threshold"] is None]
    if missing:
        names = ", ".join(missing[:SHOWN_LABELS]) + (f" and {len(missing) - SHOWN_LABELS} more"
                                                     if len(missing) > SHOWN_LABELS else "")
        return (f"Precision {target:.0%} cannot be shown at level {delta} on the {rule['n_calibration']} calibration "
                f"rows for {names} (no threshold passed the test): every text would go to a person; lower "
                "--target-precision, or keep a larger calibration part (--calibration-size).")
    shown = ", ".join(f"{lab} {found['threshold']:.3f}" for lab, found in list(per_label.items())[:SHOWN_LABELS])
    more = f" and {len(per_label) - SHOWN_LABELS} more" if len(per_label) > SHOWN_LABELS else ""
    return (f"Each label is decided automatically where the calibrated probability of its decision (present or "
            f"absent) is at least its threshold ({shown}{more}), and a text goes to a person when any of its labels "
            f"is not: with probability at least {1 - delta:.0%} over the calibration part, every label's automatic "
            f"decisions are right at least {target:.0%} of the time ({rule['method']} on the "
            f"{rule['n_calibration']} calibration rows).")


def deferral_lines(figures: DeferralFigures) -> list[str]:
    """Markdown for the report: the rule, what it did on the test part, deferral per class."""
    lines = [rule_sentence(figures["rule"]), ""]
    if figures["precision"] is not None:
        of = "" if "per_label" not in figures else f" of their {figures['decided'] * len(figures['per_label'])} label decisions"
        lines += [f"On the {figures['n']} test texts: {figures['decided']} decided automatically (coverage "
                  f"{figures['coverage']:.1%}), realised precision{of} {figures['precision']:.3f} (95% Clopper-Pearson "
                  f"{figures['low']:.3f}-{figures['high']:.3f}); {figures['n'] - figures['decided']} deferred.", ""]
    per_label = figures.get("per_label")
    if per_label is None:
        lines += ["| true class | test rows | deferred | right among its automatic decisions |", "|---|---|---|---|"]
    else:
        lines += ["Per label: the texts holding it, the share of those deferred, the share of their automatically "
                  "decided ones that got it; and the label's own decisions (present or absent) at its threshold, "
                  "which its guarantee is about, with their realised precision (95% Clopper-Pearson).", "",
                  "| label | test texts holding it | deferred | given among their automatic decisions | decisions at "
                  "its threshold | their precision |", "|---|---|---|---|---|---|"]
    for lab, cell in figures["per_class"].items():
        deferred = "-" if cell["deferred"] is None else f"{cell['deferred']:.1%}"
        right = "-" if cell["right"] is None else f"{cell['right']:.3f}"
        row = f"| {lab} | {cell['n']} | {deferred} | {right} |"
        if per_label is not None:
            own = per_label[lab]
            row += (" - | - |" if own["precision"] is None else
                    f" {own['decided']} | {own['precision']:.3f} ({own['low']:.3f}-{own['high']:.3f}) |")
        lines.append(row)
    return lines
