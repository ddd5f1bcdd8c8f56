"""Evaluate a trained run on a labelled table."""

from __future__ import annotations

from pathlib import Path

from medclf.config import TRAIN_DEFAULTS, LoadOptions, slice_column_list
from medclf.core.conformal import set_figures
from medclf.core.deferral import deferral_figures, routing
from medclf.core.figures import Figures
from medclf.core.labels import load_labeled
from medclf.core.subgroups import subgroup_figures
from medclf.errors import MedclfError
from medclf.inference.classifier import TextClassifier
from medclf.run.artifacts import CALIBRATION_PREDICTIONS_FILE, atomic_write_json


def evaluate(
    run_dir: str | Path,
    *,
    data: str,
    text_columns: list[str] | None = None,
    label_column: str | list[str] | None = None,
    drop_empty: bool = False,
    output: str | Path | None = None,
    options: LoadOptions | None = None,
    classifier: TextClassifier | None = None,
    slice_columns: list[str] | str | None = None,
    slice_min_count: int = TRAIN_DEFAULTS["slice_min_count"],
) -> Figures:
    """Accuracy, macro/weighted F1, per-class figures, confusion matrix, loss and ROC-AUC on `data`;
    for a multi-label run, micro/macro/samples F1, subset accuracy, Hamming loss and per-label figures
    at the run's thresholds.

    Column names (and the label separator) default to the ones the run was trained with; `options` say how the
    run is loaded (backend, batch size, long_text: how it cuts or windows long texts, default as trained).
    slice_columns: columns of `data` to report the figures by as well (metrics["subgroups"], core/subgroups.py);
    values seen fewer than slice_min_count times are folded into '(other)'.
    """
    slice_columns = slice_column_list(slice_columns)
    if not isinstance(slice_min_count, int) or isinstance(slice_min_count, bool) or slice_min_count < 1:
        raise MedclfError(f"--slice-min-count must be a positive integer, got {slice_min_count!r}.")
    clf = classifier or TextClassifier.load(run_dir, options)
    spec = clf.spec
    part = load_labeled(
        data,
        text_columns=text_columns or (spec.text_columns if spec else None),
        label_column=label_column or (spec.label_column if spec else None),
        drop_empty=drop_empty,
        role="evaluation data",
        multi_label=clf.multi_label,
        label_sep=spec.label_sep if spec else TRAIN_DEFAULTS["label_sep"],
        slice_columns=slice_columns,
    )
    labels = clf.labels
    seen = set(clf.task.counts(part.labels))
    unseen = sorted(seen - set(labels))
    if unseen:
        shown = ", ".join(repr(u) for u in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        raise MedclfError(
            f"{data} has {len(unseen)} label(s) the model was never trained on ({shown}); "
            f"the model knows: {', '.join(labels)}."
        )
    y = clf.task.targets(part.labels, labels)
    probs = clf.predict_proba(part.texts)
    thresholds = clf.threshold_array
    metrics = clf.task.metrics(y, probs, labels, thresholds)
    rule = clf.deferral
    if rule is not None:  # what the run's deferral rule does on this table
        metrics["deferral"] = deferral_figures(clf.task, probs, y, rule, labels, thresholds)
    if not clf.multi_label and clf.run_dir is not None and (clf.run_dir / CALIBRATION_PREDICTIONS_FILE).is_file():
        metrics["sets"] = set_figures(clf.conformal_sets(), probs, y, labels, precision=clf.precision.name)
    if part.slices:
        metrics["subgroups"] = subgroup_figures(clf.task, y, probs, clf.task.decide(probs, thresholds), part.slices,
                                                min_count=slice_min_count,
                                                routed=routing(clf.task, probs, y, rule, labels, thresholds))
    metrics["data_file"] = str(data)
    metrics["backend"] = clf.backend
    metrics["long_text"] = clf.long_text
    if output is not None:
        atomic_write_json(output, metrics)
    return metrics
