"""Classification metrics that do not let accuracy hide the small classes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

from medclf.core.figures import FIGURE_NAMES, ClassFigures, Figures, Intervals


def classification_metrics(
    y_true: list[int] | np.ndarray, probs: np.ndarray, labels: list[str], *, loss: float | None = None
) -> Figures:
    """Accuracy, macro/weighted F1, per-class P/R/F1/support, confusion matrix, ROC-AUC (one-vs-rest)."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y_true = np.asarray(y_true, dtype=int)
    y_pred = probs.argmax(axis=1)
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    present = [i for i in ids if support[i] > 0]
    per_class: dict[str, ClassFigures] = {
        labels[i]: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in ids
    }
    aucs: dict[str, float] = {}
    if len(present) >= 2:
        for i in ids:
            positives = y_true == i
            if 0 < positives.sum() < len(y_true):
                aucs[labels[i]] = float(roc_auc_score(positives.astype(int), probs[:, i]))
    result: Figures = {
        "task": "single-label",
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # Macro over the classes present in this set, so a class absent here does not count as F1 = 0.
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=ids, average="weighted", zero_division=0)),
        "macro_precision": float(np.mean([precision[i] for i in present])) if present else 0.0,
        "macro_recall": float(np.mean([recall[i] for i in present])) if present else 0.0,
        "roc_auc_ovr_macro": float(np.mean(list(aucs.values()))) if aucs else None,
        "roc_auc_ovr": aucs,
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }
    if loss is not None:
        result["loss"] = float(loss) if math.isfinite(loss) else None
    return result


def cross_entropy(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    picked = probs[np.arange(len(y_true)), np.asarray(y_true, dtype=int)]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def multilabel_metrics(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str], *, thresholds: np.ndarray, loss: float | None = None
) -> Figures:
    """Micro/macro/samples F1, subset accuracy, Hamming loss, per-label P/R/F1/support/ROC-AUC at `thresholds`."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    y_pred = (probs >= np.asarray(thresholds)).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    present = [i for i in range(len(labels)) if support[i] > 0]
    aucs = {
        labels[j]: float(roc_auc_score(y_true[:, j], probs[:, j]))
        for j in range(len(labels)) if 0 < y_true[:, j].sum() < len(y_true)
    }
    per_class: dict[str, ClassFigures] = {
        labels[j]: {"precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j]),
                    "support": int(support[j]), "threshold": float(thresholds[j]), "roc_auc": aucs.get(labels[j])}
        for j in range(len(labels))
    }
    result: Figures = {
        "task": "multi-label",
        "n": len(y_true),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        # Macro over the labels present in this set, as for single-label runs.
        "macro_f1": float(np.mean([f1[j] for j in present])) if present else 0.0,
        # Per text; a text with no true and no predicted label counts as right (F1 = 1).
        "samples_f1": float(f1_score(y_true, y_pred, average="samples", zero_division=1.0)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "macro_precision": float(np.mean([precision[j] for j in present])) if present else 0.0,
        "macro_recall": float(np.mean([recall[j] for j in present])) if present else 0.0,
        "roc_auc_macro": float(np.mean(list(aucs.values()))) if aucs else None,
        "roc_auc": aucs,
        "labels_per_text": float(y_true.sum(axis=1).mean()) if len(y_true) else 0.0,
        "predicted_labels_per_text": float(y_pred.sum(axis=1).mean()) if len(y_pred) else 0.0,
        "texts_without_label": int((y_true.sum(axis=1) == 0).sum()),
        "thresholds": {labels[j]: float(thresholds[j]) for j in range(len(labels))},
        "per_class": per_class,
        "labels": list(labels),
    }
    if loss is not None:
        result["loss"] = float(loss) if math.isfinite(loss) else None
    return result


def binary_cross_entropy(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Mean binary cross-entropy over texts and labels."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(y_true, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def headline(metrics: Figures) -> str:
    """The one-line summary of a metrics dict, for logs and tables."""
    if metrics.get("task") == "multi-label":
        return (f"micro-F1 {metrics['micro_f1']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   samples-F1 "
                f"{metrics['samples_f1']:.4f}   subset accuracy {metrics['subset_accuracy']:.4f}   Hamming loss "
                f"{metrics['hamming_loss']:.4f}")
    return f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}"


def format_intervals(metrics: Figures) -> str | None:
    """'95% interval (bootstrap): accuracy [0.59, 0.67], macro-F1 [...]', or None without intervals."""
    intervals = metrics.get("intervals")
    if not intervals:
        return None
    parts = [f"{FIGURE_NAMES[k]} [{intervals[k]['low']:.4f}, {intervals[k]['high']:.4f}]" for k in INTERVAL_KEYS
             if k in intervals]
    return f"{100 * intervals['level']:.0f}% interval (bootstrap of the test texts): " + ", ".join(parts)


def format_table(metrics: Figures) -> str:
    """A plain-text table: the headline figures (and their bootstrap intervals), then one row per class."""
    table = _format_multilabel(metrics) if metrics.get("task") == "multi-label" else _format_single(metrics)
    intervals = format_intervals(metrics)
    if intervals is None:
        return table
    first, _, rest = table.partition("\n")
    return f"{first}\n{intervals}\n{rest}"


def _summary(metrics: Figures, first: str, auc: float | None) -> tuple[list[str], int]:
    """The table's first line (figures, loss, ROC-AUC, n) and the width of its label column."""
    line = (first + (f"   loss {metrics['loss']:.4f}" if metrics.get("loss") is not None else "")
            + (f"   ROC-AUC {auc:.4f}" if auc is not None else "") + f"   (n={metrics['n']})")
    return [line], max(10, *(len(label) for label in metrics["labels"]))


def _format_single(metrics: Figures) -> str:
    first = (f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   "
             f"weighted-F1 {metrics['weighted_f1']:.4f}")
    lines, width = _summary(metrics, first, metrics.get("roc_auc_ovr_macro"))
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for label in metrics["labels"]:
        row = metrics["per_class"][label]
        lines.append(
            f"{label:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}"
        )
    return "\n".join(lines)


def _format_multilabel(metrics: Figures) -> str:
    lines, width = _summary(metrics, headline(metrics), metrics.get("roc_auc_macro"))
    lines.append(f"{'label':<{width}}  threshold  precision  recall     f1  support  ROC-AUC")
    for label in metrics["labels"]:
        row = metrics["per_class"][label]
        auc = "    n/a" if row.get("roc_auc") is None else f"{row['roc_auc']:7.3f}"
        lines.append(f"{label:<{width}}  {row['threshold']:9.3f}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
                     f"{row['f1']:5.3f}  {row['support']:7d}  {auc}")
    return "\n".join(lines)


BOOTSTRAP_RESAMPLES = 1000
IntervalKey = Literal["accuracy", "macro_f1", "micro_f1", "subset_accuracy"]
SINGLE_INTERVAL_KEYS: tuple[IntervalKey, ...] = ("accuracy", "macro_f1")
MULTI_INTERVAL_KEYS: tuple[IntervalKey, ...] = ("micro_f1", "macro_f1", "subset_accuracy")
INTERVAL_KEYS: tuple[IntervalKey, ...] = ("accuracy", "micro_f1", "macro_f1", "subset_accuracy")


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom, dtype=float), where=denom > 0)


def decision_figures_fn(y_true: np.ndarray, y_pred: np.ndarray, *, multi_label: bool
                        ) -> Callable[[np.ndarray], np.ndarray]:
    """idx -> the decision figures of the rows idx (the order of SINGLE_INTERVAL_KEYS or MULTI_INTERVAL_KEYS):
    single-label accuracy and macro-F1 over the classes present in those rows; multi-label micro- and macro-F1 and
    subset accuracy. `y_pred`: class ids, or 0/1 rows."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if multi_label:
        t_all, p_all = y_true.astype(bool), y_pred.astype(bool)

        def multi(idx: np.ndarray) -> np.ndarray:
            t, p = t_all[idx], p_all[idx]
            tp, fp, fn = (t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0)
            present = t.sum(0) > 0
            micro = _f1_from_counts(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0]
            macro = _f1_from_counts(tp, fp, fn)[present].mean() if present.any() else 0.0
            return np.array([micro, macro, (t == p).all(axis=1).mean()])

        return multi
    k = int(max(y_true.max(), y_pred.max())) + 1 if len(y_true) else 1

    def single(idx: np.ndarray) -> np.ndarray:
        t, p = y_true[idx], y_pred[idx]
        tp = np.bincount(t[t == p], minlength=k)
        present = np.bincount(t, minlength=k) > 0
        f1 = _f1_from_counts(tp, np.bincount(p, minlength=k) - tp, np.bincount(t, minlength=k) - tp)
        return np.array([(t == p).mean(), f1[present].mean()])

    return single


def percentile_bootstrap(figures: Callable[[np.ndarray], np.ndarray], n: int, *, resamples: int, seed: int,
                         level: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of each figure: paired percentile bootstrap (scipy.stats.bootstrap) over n rows, `figures(idx)`
    recomputed on each resample of the row indices; a figure undefined on some resample gets NaN bounds."""
    import warnings

    from scipy.stats import bootstrap

    with warnings.catch_warnings():  # a perfect or constant part has a degenerate bootstrap distribution
        warnings.simplefilter("ignore")
        result = bootstrap((np.arange(n),), figures, n_resamples=resamples, confidence_level=level,
                           method="percentile", vectorized=False, random_state=np.random.default_rng(seed))
    return np.atleast_1d(result.confidence_interval.low), np.atleast_1d(result.confidence_interval.high)


def bootstrap_intervals(
    y_true: np.ndarray, y_pred: np.ndarray, *, multi_label: bool, resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0, level: float = 0.95,
) -> Intervals:
    """Paired percentile bootstrap intervals (percentile_bootstrap): the test texts resampled with replacement
    `resamples` times, truth and prediction together, and the decision figures recomputed on each resample
    (decision_figures_fn). `y_pred`: class ids, or 0/1 rows."""
    n = len(y_true)
    if n == 0:
        return {}
    names = MULTI_INTERVAL_KEYS if multi_label else SINGLE_INTERVAL_KEYS
    low, high = percentile_bootstrap(decision_figures_fn(y_true, y_pred, multi_label=multi_label), n,
                                     resamples=resamples, seed=seed, level=level)
    out: Intervals = {"method": f"paired percentile bootstrap (scipy), {resamples} resamples of the {n} test texts, "
                                f"seed {seed}", "level": level}
    for i, name in enumerate(names):
        out[name] = {"low": float(low[i]), "high": float(high[i])}
    return out
