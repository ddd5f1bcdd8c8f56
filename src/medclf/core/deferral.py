"""Deferral to a person at a guaranteed precision (single-label): a text is decided automatically when its calibrated
top probability is at least a threshold, else it goes to a person; the threshold is the lowest whose automatic
decisions reach precision P with a stated guarantee, chosen on the calibration part (rows nothing else saw).

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

from medclf.core.figures import ClassDeferral, DeferralFigures, DeferralRule
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


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, request: DeferralRequest, *, n_labels: int,
                     order_confidence: np.ndarray, order_correct: np.ndarray, backend: str = "torch",
                     precision: str = "fp32") -> DeferralRule:
    """The lowest threshold on the top probability whose decisions reach the target precision with the guarantee, by
    the fixed-sequence scan this module's docstring describes, on the calibration part (`confidence`, `correct`),
    started where the validation part (`order_*`) predicts; `threshold` None where no threshold is shown. backend and
    precision: what computed the probabilities (the rule holds for them)."""
    alpha = 1.0 - request.target_precision
    grid = np.linspace(1.0, 1.0 / n_labels, GRID)
    scale = len(confidence) / max(1, len(order_confidence))
    kept_o, wrong_o = _kept_counts(np.asarray(order_confidence, dtype=float), order_correct, grid)
    predicted = binomial_p(np.floor(wrong_o * scale), np.round(kept_o * scale), alpha)
    start = int(np.argmin(predicted))  # the first minimum: the highest threshold among equals
    kept, wrong = _kept_counts(np.asarray(confidence, dtype=float), correct, grid)
    p = binomial_p(wrong[start:], kept[start:], alpha)
    failed = np.flatnonzero(p > request.delta)
    passed = len(p) if not len(failed) else int(failed[0])  # the scan stops at the first hypothesis not rejected
    rule: DeferralRule = {"target_precision": request.target_precision, "delta": request.delta, "threshold": None,
                          "n_calibration": len(confidence), "n_order": len(order_confidence),
                          "tested": min(len(p), passed + 1), "start": float(grid[start]), "p_value": None,
                          "method": "Learn then Test: fixed-sequence scan, exact binomial test (Clopper-Pearson)",
                          "backend": backend, "precision": precision}
    if passed:
        rule["threshold"], rule["p_value"] = float(grid[start + passed - 1]), float(p[passed - 1])
    return rule


def defer_below(rule: DeferralRule | None) -> float | None:
    """The top probability below which a rule defers a text: its threshold, inf where none was shown (every text
    deferred), None without a rule."""
    if rule is None:
        return None
    return math.inf if rule["threshold"] is None else rule["threshold"]


def clopper_pearson(hits: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    from scipy.stats import binomtest

    if n == 0:
        return None, None
    ci = binomtest(hits, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def deferral_figures(probs: np.ndarray, y: np.ndarray, rule: DeferralRule, labels: list[str]) -> DeferralFigures:
    """On a labelled part: the share decided (coverage), the realised precision of those decisions with its 95%
    Clopper-Pearson interval, the deferral rate per true class, and the risk-coverage curve."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    right = predicted == y
    decided = confidence >= defer_below(rule)
    low, high = clopper_pearson(int(right[decided].sum()), int(decided.sum()))
    per_class: dict[str, ClassDeferral] = {}
    for k, lab in enumerate(labels):
        rows = y == k
        per_class[lab] = {"n": int(rows.sum()),
                          "deferred": float((~decided[rows]).mean()) if rows.any() else None,
                          "right": float(right[rows & decided].mean()) if (rows & decided).any() else None}
    ranked = np.argsort(-confidence, kind="stable")
    cum_right = np.cumsum(right[ranked])
    points = np.unique(np.linspace(1, len(y), min(CURVE_POINTS, len(y))).astype(int))
    curve = [{"coverage": float(m / len(y)), "precision": float(cum_right[m - 1] / m),
              "threshold": float(confidence[ranked[m - 1]])} for m in points] if len(y) else []
    return {"rule": rule, "n": len(y), "decided": int(decided.sum()), "coverage": float(decided.mean()) if len(y) else 0.0,
            "precision": float(right[decided].mean()) if decided.any() else None, "low": low, "high": high,
            "per_class": per_class, "curve": curve}


def rule_sentence(rule: DeferralRule) -> str:
    """What the rule is, or why there is none, in one sentence."""
    target, delta = rule["target_precision"], rule["delta"]
    if rule["threshold"] is None:
        return (f"Precision {target:.0%} cannot be shown at level {delta} on the {rule['n_calibration']} calibration "
                "rows (no threshold passed the test): every text would go to a person; lower --target-precision, or "
                "keep a larger calibration part (--calibration-size).")
    return (f"Texts whose top probability is at least {rule['threshold']:.3f} are decided automatically, the rest go to "
            f"a person: with probability at least {1 - delta:.0%} over the calibration part, the automatic decisions "
            f"have precision at least {target:.0%} ({rule['method']} on the {rule['n_calibration']} calibration rows).")


def deferral_lines(figures: DeferralFigures) -> list[str]:
    """Markdown for the report: the rule, what it did on the test part, deferral per class."""
    lines = [rule_sentence(figures["rule"]), ""]
    if figures["precision"] is not None:
        lines += [f"On the {figures['n']} test texts: {figures['decided']} decided automatically (coverage "
                  f"{figures['coverage']:.1%}), realised precision {figures['precision']:.3f} (95% Clopper-Pearson "
                  f"{figures['low']:.3f}-{figures['high']:.3f}); {figures['n'] - figures['decided']} deferred.", ""]
    lines += ["| true class | test rows | deferred | right among its automatic decisions |", "|---|---|---|---|"]
    for lab, cell in figures["per_class"].items():
        deferred = "-" if cell["deferred"] is None else f"{cell['deferred']:.1%}"
        right = "-" if cell["right"] is None else f"{cell['right']:.3f}"
        lines.append(f"| {lab} | {cell['n']} | {deferred} | {right} |")
    return lines
