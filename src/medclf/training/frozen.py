"""The methods on a frozen encoder, whose run is an embedding-classifier run (model/ = the encoder +
head.safetensors, which predict, evaluate, serve, export and `TextClassifier` read alike):

- `--method embeddings` (`fit_embeddings`): logistic regression on mean-pooled embeddings, its strength C chosen on
  validation (or by cross-validation on the training rows where validation is too small to rank).
- `--method zero-shot` (`fit_zero_shot`): a classifier from label descriptions alone. Each class is the mean of its
  descriptions' normalised, mean-pooled embeddings (normalised again); a text's logit for a class is its cosine
  similarity to the class times ZERO_SHOT_SCALE. No labelled row trains it: the data's validation part only fits the
  calibration temperature (and, multi-label, the thresholds) and its test part measures it, as for every method."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from medclf.config import TrainConfig
from medclf.core.figures import Figures, HistoryRow
from medclf.core.tasks import Task
from medclf.errors import MedclfError
from medclf.model.batching import pool_logits
from medclf.model.embeddings import C_GRID, EmbeddingClassifier, embed_texts, fit_logistic
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

PRIOR_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
"""With --label-descriptions (single-label): how much of the zero-shot head (the descriptions' class prototypes x
ZERO_SHOT_SCALE) is added to the regression's head; chosen with C. Measured offline on the abstracts (8 and 16
labelled texts per class): +0.03 macro-F1 over the descriptions as rows alone; nothing at 32."""


Rows = tuple[np.ndarray, np.ndarray]
"""Extra examples for the regression: their embeddings and targets (the label descriptions)."""


@dataclass
class _Choice:
    """The grid point kept: its row, score (validation or cross-validated macro-F1), figures and head."""

    epoch: int
    score: float
    metrics: Figures
    head: tuple[np.ndarray, np.ndarray]
    c: float
    alpha: float


def cross_validated_f1(x: np.ndarray, y: np.ndarray, labels: list[str], task: Task, *, c: float,
                       class_weight: str | None, seed: int, prior: np.ndarray | None = None,
                       extra: Rows | None = None) -> float | None:
    """Macro-F1 of out-of-fold predictions of the regression at strength `c` (stratified folds, as many as the rarest
    class allows, 2 to 5): how C is chosen when the validation part is too small to rank it. None where the rows
    cannot be cross-validated (a class with one row, a label without positives in a fold). prior: a weight matrix
    added to every fitted head (the zero-shot prior); extra: rows (the descriptions) added to every fold's fit."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if task.multi_label:
        folds = KFold(n_splits=min(5, len(y)), shuffle=True, random_state=seed).split(x)
    else:
        k = int(max(2, min(5, np.bincount(y).min())))
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y)
    out_of_fold = np.zeros((len(y), len(labels)))
    try:
        for fit_rows, held in folds:
            x_fit, y_fit = x[fit_rows], y[fit_rows]
            if extra is not None:
                x_fit, y_fit = np.concatenate([x_fit, extra[0]]), np.concatenate([y_fit, extra[1]])
            weight, bias = fit_logistic(x_fit, y_fit, len(labels), c=c, class_weight=class_weight, seed=seed)
            if prior is not None:
                weight = weight + prior
            out_of_fold[held] = task.probabilities(x[held] @ weight.T + bias)
    except (ValueError, MedclfError):
        return None
    return float(task.metrics(y, out_of_fold, labels)["macro_f1"])


def _with_descriptions(model: EmbeddingClassifier, prep: Prepared, labels: list[str], x_train: np.ndarray,
                       runlog: RunLog, *, batch_size: int | None) -> tuple[np.ndarray, np.ndarray, Rows | None, np.ndarray | None]:
    """What the regression is fitted on: the training texts' embeddings and, with label descriptions, each
    description as one more example of its class (`extra`), and (single-label) their zero-shot head as a prior."""
    y_train, task = prep.y_train, prep.task
    if prep.descriptions is None:
        return x_train, y_train, None, None
    described = embed_texts(model, prep.descriptions.input_ids, batch_size=batch_size, pad_id=prep.pad_id,
                            device=prep.device)
    extra: Rows = (described, prep.descriptions.targets(task, labels))
    runlog.info("The %d label descriptions join the %d training texts the regression is fitted on.",
                len(described), len(y_train))
    prototypes = None
    if not task.multi_label:  # and their zero-shot head is a prior the regression's head is added to
        prototypes = ZERO_SHOT_SCALE * class_prototypes(model, prep.descriptions, len(labels), pad_id=prep.pad_id,
                                                        device=prep.device)
        runlog.info("Label descriptions as a prior: the zero-shot head x %s is added to the regression's head, "
                    "the weight chosen with C.", "/".join(f"{a:g}" for a in PRIOR_WEIGHTS))
    return np.concatenate([x_train, described]), np.concatenate([y_train, extra[1]]), extra, prototypes


def _choose_head(config: TrainConfig, prep: Prepared, labels: list[str], features: dict[str, np.ndarray],
                 runlog: RunLog, *, x_fit: np.ndarray, y_fit: np.ndarray, extra: Rows | None,
                 prototypes: np.ndarray | None) -> tuple[list[HistoryRow], _Choice]:
    """Fit the regression for every C (and prior weight) of the grid; keep the best on validation macro-F1, or on
    cross-validated macro-F1 of the training rows where validation cannot rank them. (history, best)."""
    class_weight = "balanced" if config.class_weights == "balanced" else None
    y_train, task = prep.y_train, prep.task
    history: list[HistoryRow] = []
    best: _Choice | None = None
    grid = [(c, a) for c in C_GRID for a in (PRIOR_WEIGHTS if prototypes is not None else (0.0,))]
    for i, (c, alpha) in enumerate(grid, 1):
        weight, bias = fit_logistic(x_fit, y_fit, len(labels), c=c, class_weight=class_weight, seed=config.seed)
        prior = None if prototypes is None else alpha * prototypes
        if prior is not None:
            weight = weight + prior
        probs = task.probabilities(features["val"] @ weight.T + bias)
        val = task.selection_metrics(prep.y_val, probs, labels)
        row: HistoryRow = {"epoch": i, "C": c, "val_loss": val["loss"], "val_accuracy": accuracy(task, val),
               "val_macro_f1": val["macro_f1"]}
        if prototypes is not None:
            row["prior_weight"] = alpha
        score = val["macro_f1"]
        crossed = cross_validated_f1(features["train"], y_train, labels, task, c=c, class_weight=class_weight,
                                     seed=config.seed, prior=prior, extra=extra) if prep.few_labels.cross_validate else None
        if crossed is not None:  # too few validation rows to rank C: cross-validation on the training rows decides
            score = row["cv_macro_f1"] = crossed
        history.append(row)
        improved = best is None or score > best.score
        runlog.info("C=%g%s  val loss %s  val %s %.4f  val macro-F1 %.4f%s%s", c,
                    f" prior {alpha:g}" if prototypes is not None else "", loss_text(val["loss"]),
                    task.accuracy_name, accuracy(task, val), val["macro_f1"],
                    f"  cross-validated macro-F1 {score:.4f}" if crossed is not None else "", "  best" if improved else "")
        if improved:
            best = _Choice(epoch=i, score=score, metrics=val, head=(weight, bias), c=c, alpha=alpha)
    assert best is not None  # the grid is not empty
    return history, best


def fit_embeddings(
    config: TrainConfig, *, source: str, labels: list[str], prep: Prepared, runlog: RunLog, progress: bool,
) -> Fitted:
    """Logistic regression on frozen, mean-pooled embeddings; the regularisation strength is picked on validation."""
    device, enc = prep.device, prep.enc
    model = EmbeddingClassifier(load_encoder(source, trust_remote_code=config.trust_remote_code), labels).to(device)
    runlog.info("Model %s on %s; frozen mean-pooled embeddings in fp32 (as at inference) + logistic regression.",
                config.model, device.type)
    start = time.perf_counter()
    features = {  # chunk: a text's windows are embedded one by one and their embeddings averaged
        name: pool_logits(
            embed_texts(model, enc[name].input_ids, batch_size=config.eval_batch_size, pad_id=prep.pad_id, device=device),
            enc[name].doc_of, enc[name].n_docs, "mean")
        for name in ("train", "val")
    }
    embed_seconds = time.perf_counter() - start
    runlog.info("Embedded %d texts (%d sequences) in %.0f s.", enc["train"].n_docs + enc["val"].n_docs,
                len(enc["train"].input_ids) + len(enc["val"].input_ids), embed_seconds)
    x_fit, y_fit, extra, prototypes = _with_descriptions(model, prep, labels, features["train"], runlog,
                                                         batch_size=config.eval_batch_size)
    history, best = _choose_head(config, prep, labels, features, runlog, x_fit=x_fit, y_fit=y_fit, extra=extra,
                                 prototypes=prototypes)
    model.set_head(*best.head)
    seconds = time.perf_counter() - start
    n = len(prep.y_train)
    return Fitted(
        model=model, precision="fp32", precision_reason="the embeddings the head is fitted on are computed in fp32",
        history=history, best_epoch=best.epoch, validation=best.metrics,
        selected=f"C={best.c:g}" + (f", prior {best.alpha:g}" if prototypes is not None else ""),
        timing={
            "train_seconds": seconds,
            "head_init_seconds": 0.0,
            "embed_seconds": embed_seconds,
            "chosen_C": best.c,
            "train_samples_per_second": n / seconds if seconds else None,
            "train_tokens_per_second": sum(enc["train"].lengths) / seconds if seconds else None,
            "optimizer_steps": 0,
        },
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
        model=model, precision="fp32", precision_reason="the embeddings the head is fitted on are computed in fp32",
        history=[{"epoch": 1, "val_loss": val["loss"], "val_accuracy": accuracy(prep.task, val),
                  "val_macro_f1": val["macro_f1"]}],
        best_epoch=1, validation=val, selected="label descriptions (zero-shot)",
        timing={"train_seconds": seconds, "head_init_seconds": 0.0, "train_samples_per_second": None,
                "train_tokens_per_second": None, "optimizer_steps": 0},
    )
