"""Conformal label sets (single-label): for each text, the labels still possible at a chosen coverage, by split
conformal prediction (Vovk, Gammerman & Shafer 2005; Angelopoulos & Bates 2023, "Conformal prediction: a gentle
introduction") on the run's calibrated probabilities, calibrated on the calibration part: rows that chose nothing
(not the weights, the temperature, the thresholds) and that the model never trained on.

Scores (how unusual a label is for a text; a set holds the labels whose score is at most the calibrated quantile):
- `lac`: 1 - p(label) (least ambiguous set-valued classifier, Sadinle, Lei & Wasserman 2019): the smallest sets on
  average.
- `aps`: the probability mass of the labels ranked above the label (adaptive prediction sets, Romano, Sesia &
  Candes 2020, without their randomisation, so the same text always gets the same set): labels join in order of
  probability until their mass reaches the quantile, so the most probable label is always in; larger sets for hard
  texts, smaller for easy ones. (The mass including the label itself, the other common form, leaves confident texts
  with an empty set that must then be filled, which over-covers: measured 0.865 at a nominal 0.80 on a synthetic
  calibrated model, against 0.80 for this form.)
- `by_class` (Mondrian, class-conditional; Vovk 2012): one quantile per true class, so each class gets the coverage,
  not only the texts on average; for imbalanced classes, at the price of larger sets for the rare ones.

The guarantee, stated with every figure: where the calibration rows and new texts are exchangeable (drawn alike),
P(true label in the set) >= coverage over both, whatever the model (with `by_class`, for each class). The quantile is
the ceil((n + 1) * coverage)-th smallest of the n calibration scores; where (n + 1) * coverage > n, no finite
quantile promises it and every label is in the set (so the rule is kept; the figures name the classes it hit). A
set is never empty: where no label passes, the most probable one is given (coverage can only rise).

Written here rather than taken from MAPIE, crepes or TorchCP: those fit on an estimator over features (MAPIE, TorchCP)
or keep their fitted state as pickled objects, where medclf has the run's calibrated probabilities already and never
pickles: the run keeps the calibration part's probabilities as a CSV (predictions_calibration.csv) and the sets are a
sort and a comparison on them, a few lines each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medclf.core.figures import ClassCoverage, LabelSetFigures, SetRow, TopKRow
from medclf.errors import MedclfError

SCORES = ("lac", "aps")
LEVELS = (0.8, 0.9, 0.95)
"""The coverages metrics.json and the report show."""
INTERVAL_LEVEL = 0.95
MIN_CLASS_ROWS = 50
"""Per-class coverage on fewer test rows than this is listed but not judged (its interval is wider than 10 points)."""


@dataclass(frozen=True)
class SetRequest:
    """What label sets to make: the coverage, the score, and whether each class gets its own quantile."""

    coverage: float = 0.9
    score: str = "lac"
    by_class: bool = False

    def __post_init__(self) -> None:
        if (not isinstance(self.coverage, (int, float)) or isinstance(self.coverage, bool)
                or not 0.0 < float(self.coverage) < 1.0):
            raise MedclfError(f"The coverage of label sets must be a share between 0 and 1 (such as 0.9), got "
                              f"{self.coverage!r}.")
        if self.score not in SCORES:
            raise MedclfError(f"The label-set score must be one of {', '.join(SCORES)}, got {self.score!r}.")
        if not isinstance(self.by_class, bool):
            raise MedclfError(f"by_class must be true or false, got {self.by_class!r}.")

    def describe(self) -> str:
        return f"{self.coverage:.0%} {self.score}{' by class' if self.by_class else ''}"


def label_scores(probs: np.ndarray, score: str) -> np.ndarray:
    """The score of every label of every row (n, K): lac 1 - p; aps the mass of the labels ranked above it (ranked by
    probability, ties in label order, for calibration rows and new texts alike)."""
    if score == "lac":
        return 1.0 - probs
    order = np.argsort(-probs, axis=1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=1)
    mass = np.cumsum(ranked, axis=1) - ranked
    out = np.empty_like(probs)
    np.put_along_axis(out, order, mass, axis=1)
    return out


def true_scores(probs: np.ndarray, y: np.ndarray, score: str) -> np.ndarray:
    """Each row's score of its true label."""
    return label_scores(probs, score)[np.arange(len(y)), y]


def true_ranks(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's true label's rank among its probabilities (0: the most probable): top-k holds it where rank < k."""
    return (probs > probs[np.arange(len(y)), y][:, None]).sum(axis=1)


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ceil((n + 1) * coverage)-th smallest score (inf where that rank exceeds n)."""
    n = len(scores)
    rank = math.ceil((n + 1) * coverage - 1e-9)
    if rank > n or n == 0:
        return math.inf
    return float(np.sort(scores)[rank - 1])


class ConformalSets:
    """Label sets calibrated on a part's calibrated probabilities and true class ids."""

    def __init__(self, probs: np.ndarray, y: np.ndarray) -> None:
        if probs.ndim != 2 or len(probs) != len(y):
            raise MedclfError("The calibration part's probabilities and labels do not match; train the run again.")
        self.n_labels = probs.shape[1]
        self.y = np.asarray(y, dtype=int)
        self.scores = {name: true_scores(probs, self.y, name) for name in SCORES}
        self.ranks = true_ranks(probs, self.y)
        """Each row's true label's rank among its probabilities (0: the most probable): what top-k needs."""

    @property
    def n(self) -> int:
        return len(self.y)

    def quantiles(self, request: SetRequest) -> np.ndarray:
        """The quantile each label's score is compared with (one value for all, or per class with by_class)."""
        scores = self.scores[request.score]
        if not request.by_class:
            return np.full(self.n_labels, conformal_quantile(scores, request.coverage))
        return np.array([conformal_quantile(scores[self.y == k], request.coverage) for k in range(self.n_labels)])

    def unbounded(self, request: SetRequest) -> list[int]:
        """The classes (by_class) or, with one quantile, all classes, whose quantile is infinite: too few rows."""
        return [k for k, q in enumerate(self.quantiles(request)) if math.isinf(q)]

    def masks(self, probs: np.ndarray, request: SetRequest) -> np.ndarray:
        """(n, K) booleans: label k is in row i's set; never an empty row (the most probable label is added)."""
        mask = label_scores(probs, request.score) <= self.quantiles(request)[None, :] + 1e-12
        empty = ~mask.any(axis=1)
        if empty.any():
            mask[np.flatnonzero(empty), probs[empty].argmax(axis=1)] = True
        return mask

    def sets(self, probs: np.ndarray, labels: list[str], request: SetRequest) -> list[list[str]]:
        """Each row's set as label names, most probable first."""
        mask = self.masks(probs, request)
        out = []
        for row, keep in zip(probs, mask):
            order = np.argsort(-row, kind="stable")
            out.append([labels[k] for k in order if keep[k]])
        return out


def coverage_interval(hits: int, n: int, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of a coverage: `hits` of `n` sets held the true label."""
    from scipy.stats import binomtest

    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(hits, n).proportion_ci(confidence_level=level, method="exact")
    return (float(ci.low), float(ci.high))


def topk_baseline(sets: ConformalSets, coverage: float) -> int:
    """The plain top-k a user would pick for a coverage: the smallest k whose calibration coverage reaches it."""
    for k in range(1, sets.n_labels + 1):
        if (sets.ranks < k).mean() >= coverage:
            return k
    return sets.n_labels


def set_figures(sets: ConformalSets, probs_test: np.ndarray, y_test: np.ndarray, labels: list[str], *,
                precision: str, levels: tuple[float, ...] = LEVELS) -> LabelSetFigures:
    """Empirical coverage on a labelled part (the test part; `evaluate`'s table) of the sets calibrated as `sets`
    says: overall with its Clopper-Pearson interval, and per class, and set sizes, for every score, with and without
    by-class calibration, at each level; and the top-k baseline at each level."""
    rows: list[SetRow] = []
    n = len(y_test)
    for score in SCORES:
        for by_class in (False, True):
            for level in levels:
                request = SetRequest(coverage=level, score=score, by_class=by_class)
                mask = sets.masks(probs_test, request)
                hit = mask[np.arange(n), y_test]
                low, high = coverage_interval(int(hit.sum()), n)
                sizes = mask.sum(axis=1)
                per_class: dict[str, ClassCoverage] = {}
                for k, lab in enumerate(labels):
                    rows_k = y_test == k
                    per_class[lab] = {"n": int(rows_k.sum()),
                                      "coverage": float(hit[rows_k].mean()) if rows_k.any() else None}
                rows.append({"score": score, "by_class": by_class, "level": level, "coverage": float(hit.mean()),
                             "low": low, "high": high, "mean_size": float(sizes.mean()),
                             "singletons": float((sizes == 1).mean()),
                             "unbounded": [labels[k] for k in sets.unbounded(request)], "per_class": per_class})
    ranks = true_ranks(probs_test, y_test)
    top_k: list[TopKRow] = []
    for level in levels:
        k = topk_baseline(sets, level)
        hits = int((ranks < k).sum())
        low, high = coverage_interval(hits, n)
        top_k.append({"level": level, "k": k, "coverage": hits / max(1, n), "low": low, "high": high})
    return {"n_calibration": sets.n, "n_test": n, "levels": list(levels), "precision": precision,
            "interval": f"Clopper-Pearson {INTERVAL_LEVEL:.0%}", "min_class_rows": MIN_CLASS_ROWS, "rows": rows,
            "top_k": top_k}


def set_lines(figures: LabelSetFigures) -> list[str]:
    """Markdown for the report: the rule, then coverage and mean size per score and level, the top-k baseline."""
    lines = [
        f"Split-conformal label sets calibrated on {figures['n_calibration']} calibration rows (never trained or "
        f"selected on), measured on {figures['n_test']} test rows ({figures['precision']} probabilities). Guarantee: "
        "where new texts are drawn as the calibration rows were, the set holds the true label at least as often as "
        "the level (by class: for each class). Coverage with its "
        f"{figures['interval']} interval; a set is never empty.",
        "",
        "| score | calibration | level | coverage | mean size | one label |",
        "|---|---|---|---|---|---|",
    ]
    for row in figures["rows"]:
        lines.append(f"| {row['score']} | {'by class' if row['by_class'] else 'all rows'} | {row['level']:.0%} | "
                     f"{row['coverage']:.3f} ({row['low']:.3f}-{row['high']:.3f}) | {row['mean_size']:.2f} | "
                     f"{row['singletons']:.0%} |")
    at = [r for r in figures["rows"] if abs(r["level"] - 0.9) < 1e-9]
    if at:
        names = [f"{r['score']}{' by class' if r['by_class'] else ''}" for r in at]
        lines += ["", f"Coverage per class at 90% (a class with fewer than {figures['min_class_rows']} test rows is "
                      "listed, not judged: its interval is wider than 10 points):", "",
                  "| class | test rows | judged | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(at)]
        for lab, cell in at[0]["per_class"].items():
            shown = [r["per_class"][lab]["coverage"] for r in at]
            judged = "yes" if cell["n"] >= figures["min_class_rows"] else "no, too few rows"
            lines.append(f"| {lab} | {cell['n']} | {judged} | "
                         + " | ".join("-" if c is None else f"{c:.3f}" for c in shown) + " |")
    lines += ["", "The plain top-k baseline (the smallest k reaching the level on the calibration part):", "",
              "| level | k | coverage |", "|---|---|---|"]
    lines += [f"| {r['level']:.0%} | {r['k']} | {r['coverage']:.3f} ({r['low']:.3f}-{r['high']:.3f}) |"
              for r in figures["top_k"]]
    unbounded = sorted({lab for row in figures["rows"] for lab in row["unbounded"]})
    if unbounded:
        lines += ["", f"Too few calibration rows for a finite quantile at some level ({', '.join(unbounded)}): their "
                      "sets hold every label there."]
    return lines


def set_summary(figures: LabelSetFigures, level: float = 0.9) -> str | None:
    """One sentence for the model card: coverage and size of the default sets (lac, all rows) at `level`."""
    row = next((r for r in figures["rows"] if r["score"] == "lac" and not r["by_class"]
                and abs(r["level"] - level) < 1e-9), None)
    if row is None:
        return None
    top = next((r for r in figures["top_k"] if abs(r["level"] - level) < 1e-9), None)
    baseline = "" if top is None else f" (the plain top-{top['k']} held it for {top['coverage']:.1%})"
    return (f"At {level:.0%} the label set (`predict --sets {level}`, `TextClassifier.predict_set`) held the true "
            f"label for {row['coverage']:.1%} of the {figures['n_test']} test texts ({figures['interval']} "
            f"{row['low']:.1%}-{row['high']:.1%}) with {row['mean_size']:.2f} labels on average{baseline}; calibrated "
            f"on {figures['n_calibration']} rows the model never trained or selected on.")
