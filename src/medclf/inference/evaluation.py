"""Evaluate a trained run on a labelled table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medclf.config import TRAIN_DEFAULTS, LoadOptions
from medclf.core.figures import Figures
from medclf.core.labels import load_labeled
from medclf.errors import MedclfError
from medclf.inference.classifier import TextClassifier
from medclf.run.artifacts import atomic_write_json


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
) -> Figures:
    """Accuracy, macro/weighted F1, per-class figures, confusion matrix, loss and ROC-AUC on `data`;
    for a multi-label run, micro/macro/samples F1, subset accuracy, Hamming loss and per-label figures
    at the run's thresholds.

    Column names (and the label separator) default to the ones the run was trained with; `options` say how the
    run is loaded (backend, batch size, long_text: how it cuts or windows long texts, default as trained).
    """
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
    thresholds = None if clf.thresholds is None else np.array([clf.thresholds[lab] for lab in labels])
    metrics = clf.task.metrics(y, probs, labels, thresholds)
    metrics["data_file"] = str(data)
    metrics["backend"] = clf.backend
    metrics["long_text"] = clf.long_text
    if output is not None:
        atomic_write_json(output, metrics)
    return metrics
