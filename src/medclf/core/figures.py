"""The shapes of what medclf reads and computes: a row's label and a model's decision, and the figures it writes
(metrics.json and the tables in it, cv.json) as typed dictionaries.

The figures stay dictionaries because they are the files: metrics.json is read by pandas, jq, MLflow and by runs written
with older versions, so a field that is absent (a figure one task does not have, a key a newer version added) must
stay absent rather than become a default. `TypedDict` checks every reader against the writer without changing the
JSON. One metric table (`Figures`) holds either task's keys; `Task.headline_keys` says which a task fills.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict, cast

Label = str | tuple[str, ...]
"""A row's label as the data gives it: a class name, or (multi-label) the tuple of its labels, possibly empty."""
Decision = str | list[str]
"""What a model decides for a text: a class name, or (multi-label) the list of labels at or above their thresholds."""


def class_names(values: Sequence[Label]) -> list[str]:
    """Single-label rows' labels, typed as what they are: one class name each (`load_labeled` reads them so)."""
    return cast("list[str]", values)


def label_sets(values: Sequence[Label]) -> list[tuple[str, ...]]:
    """Multi-label rows' labels, typed as what they are: a tuple of names each (`load_labeled` reads them so)."""
    return cast("list[tuple[str, ...]]", values)


FigureKey = Literal["accuracy", "macro_f1", "weighted_f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss"]
"""A headline figure of a metric table (a share between 0 and 1)."""

FIGURE_NAMES: dict[FigureKey, str] = {
    "accuracy": "accuracy", "macro_f1": "macro-F1", "weighted_f1": "weighted-F1", "micro_f1": "micro-F1",
    "samples_f1": "samples-F1", "subset_accuracy": "subset accuracy", "hamming_loss": "Hamming loss",
}
"""How reports, cards and tables name each figure."""

Headline = dict[FigureKey, float]
"""The headline figures of one table (the TF-IDF baseline's, a cross-validation fold's)."""


class Interval(TypedDict):
    low: float
    high: float


class Intervals(TypedDict, total=False):
    """Bootstrap intervals of a test part's figures (single-label: accuracy and macro-F1; multi-label: micro-F1,
    macro-F1 and subset accuracy), with how they were made."""

    accuracy: Interval
    macro_f1: Interval
    micro_f1: Interval
    subset_accuracy: Interval
    method: str
    level: float


class ClassFigures(TypedDict, total=False):
    precision: float
    recall: float
    f1: float
    support: int
    threshold: float
    """Multi-label: the label's decision threshold."""
    roc_auc: float | None
    """Multi-label: the label's ROC-AUC (None: the part has only one outcome for it)."""


class Reliability(TypedDict):
    """Equal-width confidence bins: count, mean confidence and observed frequency per bin, and the ECE."""

    ece: float
    count: list[int]
    confidence: list[float]
    frequency: list[float]


class Calibration(TypedDict, total=False):
    temperature: float
    bins: int
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    reliability_before: Reliability
    reliability_after: Reliability
    folded_into_model: bool
    note: str


class SliceRow(TypedDict, total=False):
    """One value of a slice column in the figures by subgroup (core/subgroups.py)."""

    value: str
    n: int
    judged: bool
    reason: str
    """Why a slice is not judged (too few rows)."""
    figures: dict[str, float | None]
    intervals: dict[str, Interval | None]
    gap: dict[str, float | None]
    """The slice's figure minus the whole part's."""


class Subgroups(TypedDict):
    """The figures by subgroup of a labelled part: the rules, the whole part's figures, the slices per column."""

    rule: str
    min_count: int
    min_rows: int
    level: float
    method: str
    keys: list[str]
    overall: dict[str, float | None]
    columns: dict[str, list[SliceRow]]


class ClassCoverage(TypedDict):
    n: int
    coverage: float | None


class SetRow(TypedDict):
    """Label sets of one score, calibration and level on a test part (core/conformal.py)."""

    score: str
    by_class: bool
    level: float
    coverage: float
    low: float
    high: float
    mean_size: float
    singletons: float
    """The share of sets with one label."""
    unbounded: list[str]
    """Classes whose quantile was infinite (too few calibration rows): their sets hold every label."""
    per_class: dict[str, ClassCoverage]


class TopKRow(TypedDict):
    level: float
    k: int
    coverage: float
    low: float
    high: float


class LabelSetFigures(TypedDict):
    """Conformal label sets on the test part, calibrated on the calibration part."""

    n_calibration: int
    n_test: int
    levels: list[float]
    precision: str
    interval: str
    min_class_rows: int
    rows: list[SetRow]
    top_k: list[TopKRow]


class LabelRule(TypedDict):
    """One label's threshold in a multi-label rule, as the scan chose it for that label."""

    threshold: float | None
    """None: the target could not be shown for this label (every text would be deferred)."""
    tested: int
    start: float | None
    p_value: float | None


class _RuleOf(TypedDict, total=False):
    per_label: dict[str, LabelRule]
    """Multi-label: each label's threshold on the probability of its decision; a text is decided when every label
    is (absent for a single-label rule)."""


class DeferralRule(_RuleOf):
    """The threshold a run decides by (core/deferral.py) and how it was chosen; saved in the run (RunSpec)."""

    target_precision: float
    delta: float
    threshold: float | None
    """Single-label: None where the target could not be shown on the calibration part (every text would be
    deferred). Multi-label: the highest of the labels' thresholds (None where any label's could not be shown)."""
    n_calibration: int
    n_order: int
    """Validation rows that placed the start of the scan."""
    tested: int
    start: float | None
    p_value: float | None
    method: str
    backend: str
    precision: str
    """What computed the probabilities the rule was chosen on (torch at the run's evaluation precision; an ONNX model)."""


class ClassDeferral(TypedDict):
    n: int
    deferred: float | None
    right: float | None
    """The share right among the class's automatically decided texts."""


class LabelDeferral(TypedDict):
    """Multi-label: one label's decisions at its own threshold (what its guarantee is about)."""

    decided: int
    precision: float | None
    low: float | None
    high: float | None


class _FiguresOf(TypedDict, total=False):
    per_label: dict[str, LabelDeferral]
    """Multi-label: each label's decisions at its own threshold."""


class Routed(TypedDict):
    """How many texts of a part a deferral rule decided, and how well: coverage, realised precision, its interval."""

    n: int
    decided: int
    coverage: float
    precision: float | None
    """The share right of the decided texts' decisions (multi-label: of their label decisions, present or absent)."""
    low: float | None
    high: float | None


class DeferralFigures(_FiguresOf, Routed):
    """What a deferral rule did on a labelled part."""

    rule: DeferralRule
    per_class: dict[str, ClassDeferral]
    """Per true class (multi-label: per label, among the texts holding it)."""
    curve: list[dict[str, float]]
    """Risk-coverage: the precision of the most confident share of texts, for shares from 1/n to all."""


Figures = TypedDict("Figures", {
    "task": str, "n": int, "loss": float | None, "labels": list[str], "per_class": dict[str, ClassFigures],
    "macro_f1": float, "macro_precision": float, "macro_recall": float,
    # single-label
    "accuracy": float, "weighted_f1": float, "roc_auc_ovr_macro": float | None, "roc_auc_ovr": dict[str, float],
    "confusion_matrix": list[list[int]],
    # multi-label
    "micro_f1": float, "samples_f1": float, "subset_accuracy": float, "hamming_loss": float,
    "roc_auc_macro": float | None, "roc_auc": dict[str, float], "labels_per_text": float,
    "predicted_labels_per_text": float, "texts_without_label": int, "thresholds": dict[str, float],
    "at_threshold_0.5": Headline,
    # the test part of a run
    "intervals": Intervals, "calibration": Calibration, "subgroups": Subgroups,
    "sets": LabelSetFigures, "deferral": DeferralFigures,
    # `medclf evaluate` of a saved run
    "data_file": str, "backend": str, "long_text": str,
}, total=False)
"""The metric table of one labelled part (`Task.metrics`): its `task` key says which task's figures it holds."""


class HistoryRow(TypedDict, total=False):
    """One row of a run's history: an epoch of fine-tuning, or one C of the embeddings' grid."""

    epoch: int
    step: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float
    val_macro_f1: float
    lr: float
    seconds: float
    samples_per_second: float
    avg_val_loss: float | None
    avg_val_accuracy: float
    avg_val_macro_f1: float
    C: float
    prior_weight: float
    cv_macro_f1: float


class Timing(TypedDict, total=False):
    """Where a run's time went (seconds, and throughput where it means something)."""

    train_seconds: float
    head_init_seconds: float
    embed_seconds: float
    chosen_C: float
    train_samples_per_second: float | None
    train_tokens_per_second: float | None
    optimizer_steps: int
    peak_gpu_memory_bytes: int | None
    test_inference_seconds: float
    test_inference_samples_per_second: float | None
    total_seconds: float | None


class _TruncationCore(TypedDict):
    max_length: int
    texts_cut: int
    share_texts_cut: float
    share_tokens_lost: float
    mean_tokens: float
    mean_tokens_kept: float


class Truncation(_TruncationCore, total=False):
    """How much of a part's text the model saw (chunk mode: how many windows it made)."""

    tokens_p10: float
    tokens_p50: float
    tokens_p90: float
    tokens_max: int
    windows: int
    mean_windows: float


class DataFigures(TypedDict, total=False):
    how: str
    n_train: int
    n_val: int
    n_test: int
    n_calibration: int
    class_counts: dict[str, dict[str, int]]
    n_dropped_empty: int
    truncation: dict[str, Truncation]


class RunMetrics(TypedDict, total=False):
    """metrics.json of a training run."""

    few_shot: bool
    few_shot_reason: str
    test: Figures
    baseline_tfidf: Headline | None
    task: str
    method: str
    validation: Figures
    best_epoch: int
    selected: str
    history: list[HistoryRow]
    data: DataFigures
    timing: Timing


class Band(TypedDict):
    """A figure over cross-validation's folds: mean, standard deviation and the t interval for the mean."""

    mean: float
    sd: float
    low: float
    high: float


class FoldRow(TypedDict, total=False):
    """One fold of a cross-validation (cv.json's rows): its part sizes, headline test figures and training time."""

    fold: int
    n_train: int
    n_val: int
    n_test: int
    accuracy: float
    macro_f1: float
    weighted_f1: float
    micro_f1: float
    samples_f1: float
    subset_accuracy: float
    hamming_loss: float
    train_seconds: float


class _CVReportCore(TypedDict):

    folds: int
    workers: int
    grouped_by: str | None
    seed: int
    rows: list[FoldRow]
    summary: dict[FigureKey, Band]
    interval: str
    seconds: float
    config: dict[str, object]


class FoldDeferral(TypedDict):
    fold: int
    threshold: float | None
    n: int
    decided: int
    coverage: float
    precision: float | None


class CVDeferral(Routed):
    """Deferral across the folds: each fold's rule (chosen on its own calibration part) on its own test fold, and
    every row's out-of-fold routing pooled."""

    target_precision: float
    delta: float
    interval: str
    folds: list[FoldDeferral]
    folds_at_target: int
    """Folds whose realised precision reached the target (a fold that decided nothing is not counted)."""
    folds_deciding: int


class CVSetRow(TypedDict):
    score: str
    by_class: bool
    level: float
    coverage: float
    """Pooled over the folds' test rows."""
    worst_fold: float
    mean_size: float


class CVReport(_CVReportCore, total=False):
    """cv.json."""

    subgroups: Subgroups
    """With slice columns: the figures by subgroup of every row's out-of-fold prediction."""
    deferral: CVDeferral
    """With --target-precision: what each fold's rule did on its test fold, and pooled."""
    sets: list[CVSetRow]
    """With a calibration part (single-label): the label sets' coverage and size, pooled and in the worst fold."""
