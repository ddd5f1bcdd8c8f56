"""Single-label and multi-label classification: what differs between the two, in one place.

Training, evaluation, inference, export and serving ask the run's task how to turn logits into
probabilities (softmax or sigmoid), labels into targets, targets into a loss, and probabilities
into decisions (the most probable class, or every label at or above its own threshold).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from medclf.core.figures import Decision, FigureKey, Figures, Headline, Label, class_names
from medclf.core.shift import as_binary, estimate_shares, prevalence_test, reweight

if TYPE_CHECKING:  # torch is imported where a task's torch methods run, not with this module
    import torch

DEFAULT_THRESHOLD = 0.5
ProblemType = Literal["single_label_classification", "multi_label_classification"]
AucKey = Literal["roc_auc_ovr_macro", "roc_auc_macro"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    out = np.empty_like(logits, dtype=np.float64)
    positive = logits >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-logits[positive]))
    exp = np.exp(logits[~positive])
    out[~positive] = exp / (1.0 + exp)
    return out.astype(logits.dtype if np.issubdtype(logits.dtype, np.floating) else np.float64)


def tune_thresholds(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One threshold per label that maximises that label's F1 on (y, probs).

    Candidates are the midpoints between consecutive distinct probabilities (predict the top k texts
    positive, for every k); ties go to the threshold nearest 0.5. A label with no positive text keeps
    0.5: there is nothing to tune it on."""
    y = np.asarray(y, dtype=bool)
    thresholds = np.full(y.shape[1], DEFAULT_THRESHOLD)
    for j in range(y.shape[1]):
        n_pos = int(y[:, j].sum())
        if n_pos == 0:
            continue
        order = np.argsort(-probs[:, j], kind="stable")
        p = probs[order, j].astype(np.float64)
        tp = np.cumsum(y[order, j])
        k = np.arange(1, len(p) + 1)
        nxt = np.append(p[1:], 0.0)
        distinct = p > nxt  # a cut between k and k+1 texts only exists where the probabilities differ
        distinct[-1] = True
        f1 = 2 * tp / (k + n_pos)
        cut = (p + nxt) / 2
        candidates = np.flatnonzero(distinct)
        best = f1[candidates].max()
        tied = candidates[np.isclose(f1[candidates], best)]
        thresholds[j] = cut[tied[np.argmin(np.abs(cut[tied] - DEFAULT_THRESHOLD))]]
    return thresholds


PREVALENCE_TEST = ("permutation test of the mean calibrated probabilities, new data against the reference part "
                   "(black-box shift detection, Lipton et al. 2018)")


@dataclass(frozen=True)
class PriorShift:
    """Shares estimated without labels (one per class, or per label), their 95% bootstrap interval, and the p-value
    of the test that the probabilities are drawn as the reference part's."""

    shares: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_value: float
    test: str


class SingleLabel:
    """One class per text: softmax, cross-entropy, the most probable class."""

    multi_label = False
    name = "single-label"
    problem_type: ProblemType = "single_label_classification"
    classes = "classes"
    headline_keys: tuple[FigureKey, ...] = ("accuracy", "macro_f1", "weighted_f1")
    """The figures a run is summed up by (run log, TF-IDF baseline, cross-validation, served model info)."""
    accuracy_key: FigureKey = "accuracy"
    accuracy_name = "acc"
    auc_key: AucKey = "roc_auc_ovr_macro"

    @staticmethod
    def probabilities_torch(logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.softmax(logits, dim=-1)

    @staticmethod
    def probabilities(logits: np.ndarray) -> np.ndarray:
        return softmax(logits)

    @staticmethod
    def targets(values: Sequence[Label], labels: list[str]) -> np.ndarray:
        index = {lab: i for i, lab in enumerate(labels)}
        return np.array([index[v] for v in class_names(values)], dtype=np.int64)

    @staticmethod
    def decide(probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """Predicted label ids: shape (n,)."""
        return probs.argmax(axis=1)

    @staticmethod
    def decision_confidence(probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """The calibrated probability that each decision is right, shape (n, 1): one decision a text (its top label)."""
        return probs.max(axis=1, keepdims=True)

    @staticmethod
    def decisions_right(probs: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """Whether each decision is right, shape (n, 1)."""
        return (probs.argmax(axis=1) == np.asarray(y))[:, None]

    @staticmethod
    def prior_shift(probs: np.ndarray, train: np.ndarray, *, reference: np.ndarray, permutations: int = 1000,
                    resamples: int = 200, seed: int = 0) -> PriorShift:
        """The class shares of the texts behind `probs`, estimated without labels (core.shift: EM, bootstrap
        interval), and the permutation test of their probabilities against the `reference` part's."""
        found = estimate_shares(probs, train, resamples=resamples, seed=seed)
        _, p = prevalence_test(reference, probs, binary=False, permutations=permutations, seed=seed)
        return PriorShift(shares=found.shares, low=found.low, high=found.high, p_value=p, test=PREVALENCE_TEST)

    @staticmethod
    def reweight(probs: np.ndarray, train: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Bayes' correction of calibrated probabilities learnt under shares `train` to shares `new`."""
        return reweight(probs, train, new)

    @staticmethod
    def names(decided: np.ndarray | np.generic, labels: list[str]) -> str:
        return labels[int(decided)]

    @staticmethod
    def agreement(a: np.ndarray, b: np.ndarray, thresholds: np.ndarray | None = None) -> float:
        """Share of texts with the same top label."""
        return float((a.argmax(axis=1) == b.argmax(axis=1)).mean()) if len(a) else 1.0

    @staticmethod
    def counts(values: Sequence[Label]) -> dict[str, int]:
        return dict(Counter(class_names(values)))

    @staticmethod
    def rows_per_class(y: np.ndarray, n_labels: int) -> np.ndarray:
        """Rows of each class among targets `y`."""
        return np.bincount(y, minlength=n_labels)

    @staticmethod
    def metrics(y: np.ndarray, probs: np.ndarray, labels: list[str], thresholds: np.ndarray | None = None) -> Figures:
        from medclf.core.metrics import classification_metrics, cross_entropy

        return classification_metrics(y, probs, labels, loss=cross_entropy(probs, y))

    def selection_metrics(self, y: np.ndarray, probs: np.ndarray, labels: list[str]) -> Figures:
        """Validation figures that pick the kept weights (macro_f1 decides)."""
        return self.metrics(y, probs, labels)

    @staticmethod
    def loss(y_train: np.ndarray, n_labels: int, class_weights: str) -> torch.nn.Module:
        import torch

        weight = None
        if class_weights == "balanced":
            counts = np.bincount(y_train, minlength=n_labels)
            weight = torch.tensor(len(y_train) / (n_labels * np.maximum(counts, 1)), dtype=torch.float32)
        return torch.nn.CrossEntropyLoss(weight=weight)


class MultiLabel:
    """Any number of labels per text (none included): sigmoid, binary cross-entropy, a threshold per label."""

    multi_label = True
    name = "multi-label"
    problem_type: ProblemType = "multi_label_classification"
    classes = "labels, several per text allowed"
    headline_keys: tuple[FigureKey, ...] = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")
    accuracy_key: FigureKey = "subset_accuracy"
    accuracy_name = "subset acc"
    """Subset accuracy: the share of texts whose label set is exactly right."""
    auc_key: AucKey = "roc_auc_macro"

    @staticmethod
    def probabilities_torch(logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sigmoid(logits)

    @staticmethod
    def probabilities(logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    @staticmethod
    def targets(values: Sequence[Label], labels: list[str]) -> np.ndarray:
        index = {lab: i for i, lab in enumerate(labels)}
        y = np.zeros((len(values), len(labels)), dtype=np.float32)
        for row, present in enumerate(values):
            y[row, [index[lab] for lab in present]] = 1.0
        return y

    @staticmethod
    def decide(probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """Predicted label indicators: shape (n, n_labels), True where a probability reaches its threshold."""
        return probs >= (DEFAULT_THRESHOLD if thresholds is None else np.asarray(thresholds))

    def decision_confidence(self, probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """The calibrated probability that each decision is right, shape (n, n_labels): one decision a label (present
        or absent, at its threshold): the label's probability where it is given, one minus it where it is not."""
        return np.where(self.decide(probs, thresholds), probs, 1.0 - probs)

    def decisions_right(self, probs: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """Whether each label's decision (present or absent) is right, shape (n, n_labels)."""
        return self.decide(probs, thresholds) == np.asarray(y, dtype=bool)

    @staticmethod
    def prior_shift(probs: np.ndarray, train: np.ndarray, *, reference: np.ndarray, permutations: int = 1000,
                    resamples: int = 200, seed: int = 0) -> PriorShift:
        """Each label's share of texts holding it, estimated without labels: one two-class problem per label
        (core.shift); the permutation test compares all labels' probabilities with the `reference` part's at once."""
        found = [estimate_shares(as_binary(probs[:, j]), np.array([1.0 - train[j], train[j]]), resamples=resamples,
                                 seed=seed + j) for j in range(probs.shape[1])]
        _, p = prevalence_test(reference, probs, binary=True, permutations=permutations, seed=seed)
        return PriorShift(shares=np.array([f.shares[1] for f in found]), low=np.array([f.low[1] for f in found]),
                          high=np.array([f.high[1] for f in found]), p_value=p, test=PREVALENCE_TEST)

    @staticmethod
    def reweight(probs: np.ndarray, train: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Bayes' correction of each label's calibrated probability from share `train` to share `new`."""
        return np.stack([reweight(as_binary(probs[:, j]), np.array([1 - train[j], train[j]]),
                                  np.array([1 - new[j], new[j]]))[:, 1] for j in range(probs.shape[1])], axis=1) \
            if probs.shape[1] else probs

    @staticmethod
    def names(decided: np.ndarray | np.generic, labels: list[str]) -> list[str]:
        return [labels[i] for i in np.flatnonzero(decided)]

    def agreement(self, a: np.ndarray, b: np.ndarray, thresholds: np.ndarray | None = None) -> float:
        """Share of texts given exactly the same label set."""
        return float((self.decide(a, thresholds) == self.decide(b, thresholds)).all(axis=1).mean()) if len(a) else 1.0

    @staticmethod
    def counts(values: Sequence[Label]) -> dict[str, int]:
        counts = Counter(lab for present in values for lab in present)
        return dict(counts)

    @staticmethod
    def rows_per_class(y: np.ndarray, n_labels: int) -> np.ndarray:
        """Positive rows of each label among targets `y`."""
        return y.sum(axis=0)

    @staticmethod
    def metrics(y: np.ndarray, probs: np.ndarray, labels: list[str], thresholds: np.ndarray | None = None) -> Figures:
        from medclf.core.metrics import binary_cross_entropy, multilabel_metrics

        t = np.full(len(labels), DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds)
        return multilabel_metrics(y, probs, labels, thresholds=t, loss=binary_cross_entropy(probs, y))

    def selection_metrics(self, y: np.ndarray, probs: np.ndarray, labels: list[str]) -> Figures:
        """Validation figures at thresholds tuned on this same validation part (as the kept model will use)."""
        return self.metrics(y, probs, labels, tune_thresholds(y, probs))

    @staticmethod
    def loss(y_train: np.ndarray, n_labels: int, class_weights: str) -> torch.nn.Module:
        """BCE on logits; with class_weights 'balanced', pos_weight = negatives / positives per label."""
        import torch

        pos_weight = None
        if class_weights == "balanced":
            positives = y_train.sum(axis=0)
            pos_weight = torch.tensor((len(y_train) - positives) / np.maximum(positives, 1), dtype=torch.float32)
        return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)


class Task(Protocol):
    """What training, evaluation, inference, the report and the server ask of a run's task (single- or multi-label;
    a new task type implements this and joins `task_for`/`task_of`)."""

    multi_label: bool
    name: str
    """As metrics.json and train_config.json write it."""
    problem_type: ProblemType
    """transformers' config.problem_type (which loss and activation a plain `from_pretrained` model applies)."""
    classes: str
    """What the labels are, in words for the log."""
    headline_keys: tuple[FigureKey, ...]
    """The figures a run is summed up by (run log, TF-IDF baseline, cross-validation, served model info)."""
    accuracy_key: FigureKey
    accuracy_name: str
    auc_key: AucKey

    def probabilities_torch(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (a tensor) -> probabilities, differentiably (explanations, training's validation)."""

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Logits -> probabilities: softmax, or each label's sigmoid."""

    def targets(self, values: Sequence[Label], labels: list[str]) -> np.ndarray:
        """Labels as the data holds them -> the model's targets (class ids, or a 0/1 matrix)."""

    def decide(self, probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """Probabilities -> decisions (class ids, or label indicators at the thresholds)."""

    def decision_confidence(self, probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """The calibrated probability that each of a text's decisions is right: (n, 1) single-label (the top label),
        (n, n_labels) multi-label (each label present or absent); what a deferral rule compares with its thresholds."""

    def decisions_right(self, probs: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """Whether each of decision_confidence's decisions is right against targets `y` (same shape)."""

    def prior_shift(self, probs: np.ndarray, train: np.ndarray, *, reference: np.ndarray, permutations: int = 1000,
                    resamples: int = 200, seed: int = 0) -> PriorShift:
        """The class shares (multi-label: each label's share of texts) of the texts behind `probs`, estimated without
        labels from the calibrated probabilities learnt under shares `train`, with intervals, and the test that the
        probabilities are drawn as the `reference` part's."""

    def reweight(self, probs: np.ndarray, train: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Calibrated probabilities learnt under shares `train` moved to shares `new` (Bayes' rule)."""

    def names(self, decided: np.ndarray | np.generic, labels: list[str]) -> Decision:
        """One row's decision in label names (a name, or a list of names)."""

    def agreement(self, a: np.ndarray, b: np.ndarray, thresholds: np.ndarray | None = None) -> float:
        """Share of texts two sets of probabilities decide the same way."""

    def counts(self, values: Sequence[Label]) -> dict[str, int]:
        """Rows per label."""

    def rows_per_class(self, y: np.ndarray, n_labels: int) -> np.ndarray:
        """Rows of each class (multi-label: positive rows of each label) among targets `y`."""

    def metrics(self, y: np.ndarray, probs: np.ndarray, labels: list[str],
                thresholds: np.ndarray | None = None) -> Figures:
        """The metric table of a labelled part (its `task` key names this task)."""

    def selection_metrics(self, y: np.ndarray, probs: np.ndarray, labels: list[str]) -> Figures:
        """The validation figures that pick the kept weights (macro_f1 decides)."""

    def loss(self, y_train: np.ndarray, n_labels: int, class_weights: str) -> torch.nn.Module:
        """The training loss (a torch module), weighted as --class-weights says."""


SINGLE_LABEL: Task = SingleLabel()
MULTI_LABEL: Task = MultiLabel()


def task_for(multi_label: bool) -> Task:
    return MULTI_LABEL if multi_label else SINGLE_LABEL


def task_of(metrics: Figures) -> Task:
    """The task a metrics table (metrics.json's parts, `Task.metrics` output) was computed for."""
    return MULTI_LABEL if metrics.get("task") == MULTI_LABEL.name else SINGLE_LABEL


def headline_figures(metrics: Figures) -> Headline:
    """The headline figures of a metrics table, as its task names them."""
    return {key: metrics[key] for key in task_of(metrics).headline_keys}
