"""`--method zero-shot`: a classifier from label descriptions alone. Each class is the mean of its descriptions'
normalised, mean-pooled embeddings (normalised again); a text's logit for a class is its cosine similarity to the
class times ZERO_SHOT_SCALE. No labelled row trains it: the data's validation part only fits the calibration
temperature (and, multi-label, the thresholds) and its test part measures it, as for every other method. The run is
an embedding-classifier run (model/ = the encoder + head.safetensors), so predict, evaluate, serve, export and
`TextClassifier` read it unchanged."""

from __future__ import annotations

import time

import numpy as np

from medclf.config import TrainConfig
from medclf.model.embeddings import EmbeddingClassifier
from medclf.model.modeling import load_encoder
from medclf.training.fitting import (
    ZERO_SHOT_SCALE,
    Fitted,
    Prepared,
    RunLog,
    accuracy,
    class_prototypes,
    loss_text,
    validate,
)


def fit_zero_shot(
    config: TrainConfig, *, source: str, labels: list[str], prep: Prepared, runlog: RunLog, progress: bool,
) -> Fitted:
    """The head is the class prototypes; nothing is fitted to labelled rows."""
    assert prep.descriptions is not None  # TrainConfig requires --label-descriptions with this method
    start = time.perf_counter()
    model = EmbeddingClassifier(load_encoder(source, trust_remote_code=config.trust_remote_code), labels).to(prep.device)
    prototypes = class_prototypes(model, prep.descriptions, len(labels), pad_id=prep.pad_id, device=prep.device)
    model.set_head(prototypes * ZERO_SHOT_SCALE, np.zeros(len(labels)))
    seconds = time.perf_counter() - start
    val = validate(model, prep, labels, config)
    runlog.info("Zero-shot: %d classes from %d label description(s); no labelled row trains it (the %d training rows "
                "are not used). Validation: loss %s, %s %.4f, macro-F1 %.4f.", len(labels), len(prep.descriptions.owner),
                len(prep.y_train), loss_text(val["loss"]), prep.task.accuracy_name, accuracy(prep.task, val),
                val["macro_f1"])
    return Fitted(
        model=model, precision="fp32", precision_reason="embeddings are computed in fp32, as at inference",
        history=[{"epoch": 1, "val_loss": val["loss"], "val_accuracy": accuracy(prep.task, val),
                  "val_macro_f1": val["macro_f1"]}],
        best_epoch=1, validation=val, selected="label descriptions (zero-shot)",
        timing={"train_seconds": seconds, "head_init_seconds": 0.0, "train_samples_per_second": None,
                "train_tokens_per_second": None, "optimizer_steps": 0},
    )
