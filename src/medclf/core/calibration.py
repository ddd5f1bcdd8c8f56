"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") and how to judge it.

One scalar T, fitted on the validation part by minimising the negative log-likelihood of
softmax(logits / T) (multi-label: of sigmoid(logits / T), every label); every inference path divides
the logits by T. Dividing by a positive scalar keeps the order of a text's logits, so no argmax
changes; a multi-label threshold t moves to sigmoid(logit(t) / T), so no decision changes either.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from medclf.core.figures import Calibration, Reliability
from medclf.core.tasks import Task, sigmoid

if TYPE_CHECKING:
    import torch

ECE_BINS = 15
T_BOUNDS = (0.05, 20.0)
MIN_TEXTS = 30
"""Fewer validation texts than this leave the temperature at 1: one scalar fitted on a handful of texts says
more about those texts than about the model."""


def temperature_for(logits: np.ndarray, y: np.ndarray, task: Task) -> tuple[float, str]:
    """The temperature to use and why: fitted on the validation part, or 1 where a fit would mislead."""
    if len(logits) < MIN_TEXTS:
        return 1.0, f"not fitted: {len(logits)} validation texts, fewer than {MIN_TEXTS}"
    t = fit_temperature(logits, y, task)
    if t <= T_BOUNDS[0] * 1.01:
        # NLL falls without end as T -> 0 when every validation text is already decided right: no information.
        return 1.0, "not fitted: the validation part is perfectly separated, so any sharpening looks better"
    return t, f"fitted on {len(logits)} validation texts"


def fit_temperature(logits: np.ndarray, y: np.ndarray, task: Task) -> float:
    """The T in T_BOUNDS that minimises the validation negative log-likelihood of task.probabilities(logits / T)."""
    from scipy.optimize import minimize_scalar

    from medclf.core.metrics import binary_cross_entropy, cross_entropy

    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        probs = task.probabilities(logits / math.exp(log_t))
        return binary_cross_entropy(probs, y) if task.multi_label else cross_entropy(probs, y)

    found = minimize_scalar(nll, bounds=tuple(math.log(b) for b in T_BOUNDS), method="bounded",
                            options={"xatol": 1e-4})
    best = float(math.exp(found.x))
    return best if nll(math.log(best)) <= nll(0.0) else 1.0  # never worse than leaving the model as it is


def fold_temperature(model: torch.nn.Module, temperature: float) -> bool:
    """Divide the weights and bias of the layer that outputs the logits by T, so that the saved model itself
    gives calibrated logits (plain transformers, ONNX and medclf alike). False where that layer is not a
    single linear layer (then the run keeps T for TextClassifier to apply)."""
    import torch

    head = getattr(model, "head", None)  # EmbeddingClassifier
    if head is None:
        head = getattr(model, "classifier", None)  # BERT, DistilBERT, ...
        head = getattr(head, "out_proj", head)  # RoBERTa-style classification heads end in out_proj
    if not isinstance(head, torch.nn.Linear):
        return False
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)
    return True


def scale_thresholds(thresholds: np.ndarray, temperature: float) -> np.ndarray:
    """Multi-label thresholds on sigmoid(z) moved to sigmoid(z / T): the same decisions after calibration."""
    t = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-12, 1 - 1e-12)
    return sigmoid(np.log(t / (1 - t)) / temperature)


def _confidence_and_outcome(probs: np.ndarray, y: np.ndarray, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """Single-label: the top probability and whether the top label is right. Multi-label: every
    (text, label) probability and whether the label is there."""
    if task.multi_label:
        return probs.ravel(), np.asarray(y, dtype=float).ravel()
    return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(y)).astype(float)


def reliability(probs: np.ndarray, y: np.ndarray, task: Task, bins: int = ECE_BINS) -> Reliability:
    """Per equal-width confidence bin: count, mean confidence, observed frequency; and the ECE."""
    confidence, outcome = _confidence_and_outcome(probs, y, task)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf = np.bincount(index, weights=confidence, minlength=bins)
    hits = np.bincount(index, weights=outcome, minlength=bins)
    mean_conf = np.divide(conf, count, out=np.zeros(bins), where=count > 0)
    freq = np.divide(hits, count, out=np.zeros(bins), where=count > 0)
    ece = float(np.sum(count * np.abs(freq - mean_conf)) / max(1, len(confidence)))
    return {"ece": ece, "count": count.tolist(), "confidence": mean_conf.tolist(), "frequency": freq.tolist()}


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, task: Task, bins: int = ECE_BINS) -> float:
    """Sum over bins of (share of predictions in the bin) x |observed frequency - mean confidence|."""
    return reliability(probs, y, task, bins)["ece"]


def brier_score(probs: np.ndarray, y: np.ndarray, task: Task) -> float:
    """Mean squared distance between the probabilities and the truth: per text summed over classes
    (single-label), per (text, label) (multi-label)."""
    if task.multi_label:
        return float(np.mean((probs - np.asarray(y, dtype=float)) ** 2))
    onehot = np.zeros_like(probs, dtype=float)
    onehot[np.arange(len(y)), np.asarray(y, dtype=int)] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def calibration_summary(raw_logits: np.ndarray, y: np.ndarray, task: Task, temperature: float) -> Calibration:
    """ECE and Brier score before and after dividing the logits by the temperature, with the bins of both."""
    before = task.probabilities(raw_logits)
    after = task.probabilities(raw_logits / temperature)
    rb, ra = reliability(before, y, task), reliability(after, y, task)
    return {
        "temperature": temperature,
        "bins": ECE_BINS,
        "ece_before": rb["ece"], "ece_after": ra["ece"],
        "brier_before": brier_score(before, y, task), "brier_after": brier_score(after, y, task),
        "reliability_before": rb, "reliability_after": ra,
    }
