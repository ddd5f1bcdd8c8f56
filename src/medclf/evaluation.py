"""Evaluate a trained run on a labelled table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medclf.artifacts import atomic_write_json
from medclf.data import load_labeled
from medclf.errors import MedclfError
from medclf.metrics import classification_metrics, cross_entropy
from medclf.predict import TextClassifier


def evaluate(
    run_dir: str | Path,
    *,
    data: str,
    text_columns: list[str] | None = None,
    label_column: str | None = None,
    drop_empty: bool = False,
    batch_size: int = 16,
    output: str | Path | None = None,
    backend: str = "auto",
    classifier: TextClassifier | None = None,
) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class figures, confusion matrix, loss and ROC-AUC on `data`.

    Column names default to the ones the run was trained with.
    """
    clf = classifier or TextClassifier.load(run_dir, batch_size=batch_size, backend=backend)
    run = clf.config.get("run", {})
    part = load_labeled(
        data,
        text_columns=text_columns or run.get("text_columns"),
        label_column=label_column or run.get("label_column"),
        drop_empty=drop_empty,
        role="evaluation data",
    )
    labels = clf.labels
    unseen = sorted(set(part.labels) - set(labels))
    if unseen:
        shown = ", ".join(repr(u) for u in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        raise MedclfError(
            f"{data} has {len(unseen)} label(s) the model was never trained on ({shown}); "
            f"the model knows: {', '.join(labels)}."
        )
    y = np.array([labels.index(lab) for lab in part.labels])
    probs = clf.predict_proba(part.texts, batch_size=batch_size)
    metrics = classification_metrics(y, probs, labels, loss=cross_entropy(probs, y))
    metrics["data_file"] = str(data)
    metrics["backend"] = clf.backend
    if output is not None:
        atomic_write_json(output, metrics)
    return metrics
