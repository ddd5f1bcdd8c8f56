"""What every fitting method (fine-tuning, frozen embeddings) starts from and hands back, and the validation pass
that decides which weights are kept."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import torch

from medclf.config import TrainConfig
from medclf.core.calibration import MIN_TEXTS
from medclf.core.figures import Figures, HistoryRow, Timing
from medclf.core.methods import method_of
from medclf.core.tasks import Task
from medclf.model.batching import Encoded, pool_logits
from medclf.model.embeddings import EmbeddingClassifier, embed_texts
from medclf.model.modeling import PrecisionChoice, batched_logits, release_memory
from medclf.training.distributed import SINGLE, Dist

log = logging.getLogger(__name__)


class RunLog:
    """Log a message and keep it for the run's train.log (whatever the caller's logging setup)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.lines: list[str] = []
        self.enabled = enabled
        """False on the other processes of a multi-process run: the main process logs for all."""

    def info(self, message: str, *args: object) -> None:
        if not self.enabled:
            return
        log.info(message, *args)
        self.lines.append(f"{datetime.now().strftime('%H:%M:%S')} {message % args if args else message}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@dataclass
class DescriptionRows:
    """Label descriptions, tokenized as the texts are: one sequence per description and the class it describes."""

    input_ids: list[list[int]]
    owner: list[int]
    """Index into the labels of each description's class."""

    def targets(self, task: Task, labels: list[str]) -> np.ndarray:
        """The descriptions as labelled rows: each is an example of its own class (and only of it)."""
        values = [(labels[i],) if task.multi_label else labels[i] for i in self.owner]
        return task.targets(values, labels)


FEW_SHOT_MIN_STEPS = 50
"""Optimizer steps a few-labels fine-tuning takes at least (3 epochs of 40 texts would be 9 steps)."""


def fewest_rows(task: Task, y: np.ndarray, n_labels: int) -> int:
    """Rows of the rarest class (multi-label: positives of the rarest label)."""
    counts = task.rows_per_class(y, n_labels)
    return int(counts.min()) if len(counts) else 0


@dataclass(frozen=True)
class FewLabels:
    """The few-labels rule, in one place: can this run's validation part rank weights, and what changes if not.

    Validation can rank when it holds at least `MIN_TEXTS` (30) rows and, for multi-label runs, whose thresholds are
    tuned per label on that label's validation F1, at least one positive of every label. Single-label selection
    ranks by macro-F1 over the whole part, so a rare class that has no validation row does not stop it: a full,
    imbalanced table is not a few-labels problem. `--few-shot auto` applies the rule when validation cannot rank,
    `on` always, `off` never (select on validation however small); zero-shot never (nothing is selected).

    When the rule applies (`applies`), and only then:
    - fine-tuning takes at least `FEW_SHOT_MIN_STEPS` optimizer steps (`min_steps`: more epochs) and keeps its last
      weights, or with --average-epochs the average of all epochs, instead of the best on validation
      (`select_on_validation` False);
    - the embeddings method picks its regularisation C (and the label descriptions' prior weight) by
      cross-validation on the training rows (`cross_validate`);
    - multi-label thresholds stay at 0.5 (`tune_thresholds` False);
    - metrics.json says `few_shot: true`, and the report, card and runs table say "few labels".
    Apart from the rule, the temperature is fitted only from `MIN_TEXTS` validation texts on (core.calibration).
    """

    applies: bool
    reason: str
    """Why, in words for the log (counts and label names only)."""

    @classmethod
    def decide(cls, mode: str, *, method: str, task: Task, y_val: np.ndarray, labels: list[str]) -> FewLabels:
        """The rule for one run: `mode` is --few-shot (auto | on | off), `y_val` the validation targets."""
        if not method_of(method).selects:
            return cls(False, f"{method} selects nothing")
        if mode == "off":
            return cls(False, "--few-shot off")
        if mode == "on":
            return cls(True, "--few-shot on")
        n_val = len(y_val)
        if n_val < MIN_TEXTS:
            return cls(True, f"the validation part has {n_val} row(s), fewer than the {MIN_TEXTS} that can rank weights")
        if task.multi_label:
            missing = [lab for lab, positives in zip(labels, np.asarray(y_val).sum(axis=0)) if positives == 0]
            if missing:
                return cls(True, f"{len(missing)} label(s) have no positive validation row to tune a threshold on "
                                 f"(e.g. {missing[0]!r})")
        return cls(False, f"the validation part ({n_val} rows) can rank weights")

    @property
    def min_steps(self) -> int:
        return FEW_SHOT_MIN_STEPS if self.applies else 0

    @property
    def select_on_validation(self) -> bool:
        return not self.applies

    @property
    def cross_validate(self) -> bool:
        return self.applies

    @property
    def tune_thresholds(self) -> bool:
        return not self.applies

    def note(self) -> str:
        """What medclf does differently, for the log and the report."""
        return (f"Few labels: {self.reason}. So: fine-tuning takes at least {FEW_SHOT_MIN_STEPS} optimizer steps "
                "(more epochs) and keeps its last weights (or, with epoch averaging, the average of all epochs) "
                "instead of the best on validation; the embeddings method picks its regularisation by "
                "cross-validation on the training rows; multi-label thresholds stay at 0.5; the temperature is "
                f"fitted only from {MIN_TEXTS} validation texts on.")


NO_FEW_LABELS = FewLabels(False, "not decided")


@dataclass
class Prepared:
    """The tokenized parts and label ids every fitting method starts from."""

    enc: dict[str, Encoded]
    y_train: np.ndarray
    """Class ids (n,), or (multi-label) a 0/1 float matrix (n, n_labels); likewise y_val and y_test."""
    y_val: np.ndarray
    y_test: np.ndarray
    pad_id: int
    device: torch.device
    task: Task
    dist: Dist = field(default_factory=lambda: SINGLE)
    """The processes of a multi-process run (SINGLE: one process)."""
    descriptions: DescriptionRows | None = None
    """--label-descriptions, tokenized (None: not given)."""
    few_labels: FewLabels = NO_FEW_LABELS
    """Whether the few-labels rule applies, and why: `FewLabels` says everything it changes."""
    evaluation: PrecisionChoice = field(default_factory=lambda: PrecisionChoice("fp32", "fp32 unless chosen"))
    """The precision of validation and test passes: inference's choice on this machine (`inference_precision`)."""
    y_calibration: np.ndarray | None = None
    """The calibration part's class ids (None: the run has no calibration part; its tokens are enc['calibration'])."""


@dataclass
class Fitted:
    """What a fitting method hands back to `train`: the model to save and how it got there."""

    model: torch.nn.Module
    precision: str
    precision_reason: str
    history: list[HistoryRow]
    best_epoch: int
    validation: Figures
    """The kept weights' validation figures."""
    timing: Timing
    selected: str = ""
    """Which weights were kept: 'epoch 2', 'average of epochs 1-3', 'C=0.1'."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def document_logits(model: torch.nn.Module, e: Encoded, config: TrainConfig, prep: Prepared) -> np.ndarray:
    """One row of logits per text, at the evaluation precision: per sequence, then (chunk) pooled over each text's
    windows. With several processes each runs its share of the texts and the rows are gathered (every text once, in
    order)."""
    dist = prep.dist
    if not dist.active:
        logits = batched_logits(model, e.input_ids, batch_size=config.eval_batch_size, pad_id=prep.pad_id,
                                device=prep.device, precision=prep.evaluation)
        return pool_logits(logits, e.doc_of, e.n_docs, config.pool)
    mine = dist.shard(e.n_docs)
    windows = e.windows_of(mine)
    logits = batched_logits(model, [e.input_ids[w] for w in windows], batch_size=config.eval_batch_size,
                            pad_id=prep.pad_id, device=prep.device, precision=prep.evaluation)
    if e.doc_of is not None:
        position = {d: i for i, d in enumerate(mine)}
        logits = pool_logits(logits, [position[e.doc_of[w]] for w in windows], len(mine), config.pool)
    return dist.gather_rows(mine, logits, e.n_docs)


def validate(model: torch.nn.Module, prep: Prepared, labels: list[str], config: TrainConfig) -> Figures:
    """Validation figures that decide which weights are kept (multi-label: at thresholds tuned on them). Evaluation
    runs at the precision TextClassifier chooses on this machine (`prep.evaluation`), so validation and test figures
    are what users get."""
    logits = document_logits(model, prep.enc["val"], config, prep)
    release_memory()
    return prep.task.selection_metrics(prep.y_val, prep.task.probabilities(logits), labels)


def accuracy(task: Task, metrics: Figures) -> float:
    """Accuracy, or (multi-label) subset accuracy: the share of texts whose label set is exactly right."""
    return metrics[task.accuracy_key]


def loss_text(value: float | None) -> str:
    """A loss for the log: 'n/a' when it was not finite (metrics store None then)."""
    return "n/a" if value is None else f"{value:.4f}"


ZERO_SHOT_SCALE = 20.0
"""Cosine similarity x 20 (a temperature of 0.05, the usual scale of similarity classifiers): the calibration stage
then fits the temperature on the validation part."""


def class_prototypes(model: EmbeddingClassifier, rows: DescriptionRows, n_labels: int, *, pad_id: int,
                     device: torch.device) -> np.ndarray:
    """(n_labels, hidden): per class the mean of its descriptions' normalised embeddings, normalised again."""
    embedded = embed_texts(model, rows.input_ids, batch_size=None, pad_id=pad_id, device=device)
    prototypes = np.zeros((n_labels, embedded.shape[1]), dtype=np.float64)
    np.add.at(prototypes, np.asarray(rows.owner), embedded)
    return prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True).clip(1e-12)
