"""Fine-tuning encoder and head: an optional linear-probe head, the step loop (training.loop), and around it what
decides: validation after every epoch, weight averaging along the trajectory, keeping the best weights, early stop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from medclf.config import TrainConfig
from medclf.core.figures import Figures, HistoryRow
from medclf.core.tasks import Task
from medclf.model.batching import pool_logits
from medclf.model.modeling import (
    autocast,
    batching_for,
    choose_precision,
    evaluating,
    freeze_embeddings,
    load_classifier,
    release_memory,
    run_batches,
)
from medclf.training.fitting import Fitted, Prepared, RunLog, accuracy, loss_text, validate
from medclf.training.loop import EpochDone, Schedule, classification_loss, progress_bar, train_epochs


def finetune(
    config: TrainConfig, *, source: str, labels: list[str], prep: Prepared, runlog: RunLog, progress: bool,
) -> Fitted:
    """Fine-tune encoder and head (optionally from a linear-probe head); keep the best weights on validation."""
    device, task, dist = prep.device, prep.task, prep.dist
    model = load_classifier(
        source, labels=labels, attention_dropout=config.attention_dropout, trust_remote_code=config.trust_remote_code
    )
    model.config.problem_type = task.problem_type
    precision = choose_precision(config.precision, device)
    model.to(device)  # type: ignore[arg-type]  # transformers wraps .to with a signature mypy misreads
    runlog.info("Model %s on %s; precision %s (%s).", config.model, device.type, precision.name, precision.reason)
    if config.freeze_embeddings:
        frozen = freeze_embeddings(model)
        runlog.info("Embedding block frozen (%.1fM of %.1fM weights).", frozen / 1e6,
                    sum(p.numel() for p in model.parameters()) / 1e6)
    probe_seconds = _probe_head(model, config, prep, labels, runlog, amp=lambda: autocast(device, precision)) \
        if config.head_init == "linear-probe" else 0.0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    schedule = Schedule.plan(config, n_train=prep.enc["train"].n_docs, world=dist.world,
                             min_steps=prep.few_labels.min_steps)
    runlog.info("Effective batch size %d (batch %d x %d process(es) x gradient accumulation %d); peak lr %g, "
                "%d optimizer steps.", schedule.global_batch * schedule.accum, config.batch_size, dist.world,
                schedule.accum, config.lr, schedule.total_steps)
    train = prep.enc["train"]
    batch_loss = classification_loss(train, prep.y_train, loss_fn=task.loss(prep.y_train, len(labels),
                                     config.class_weights).to(device), config=config, precision=precision,
                                     pad_id=prep.pad_id, device=device)
    events = train_epochs(model, train.doc_lengths, batch_loss, config=config, schedule=schedule, precision=precision,
                          device=device, dist=dist)
    keeper = Keeper(model, average=config.average_epochs, by_validation=prep.few_labels.select_on_validation)
    history: list[HistoryRow] = []
    train_seconds, samples, tokens, step = 0.0, 0, 0, 0
    for event in progress_bar(events, progress, schedule.epochs):
        if not isinstance(event, EpochDone):
            continue
        train_seconds += event.seconds
        samples += event.samples
        tokens += event.tokens
        step = event.step
        row = keeper.epoch_end(event, validate=lambda: validate(model, prep, labels, config), task=task)
        history.append(row)
        averaged = (f"  averaged weights: val loss {loss_text(row['avg_val_loss'])} macro-F1 {row['avg_val_macro_f1']:.4f}"
                    if "avg_val_loss" in row else "")
        runlog.info(
            "epoch %d/%d  train loss %.4f  val loss %s  val %s %.4f  val macro-F1 %.4f  %.0fs (%.1f samples/s)%s%s",
            event.epoch, schedule.epochs, event.train_loss, loss_text(row["val_loss"]), task.accuracy_name,
            row["val_accuracy"], row["val_macro_f1"], event.seconds, row["samples_per_second"], averaged,
            f"  best: {keeper.best_name}" if keeper.improved else "",
        )
        if config.patience is not None and not event.last and event.epoch - keeper.best_epoch >= config.patience:
            runlog.info("Early stop: no better validation macro-F1 for %d epoch(s).", config.patience)
            break
    if keeper.restore():
        if not prep.few_labels.select_on_validation:
            runlog.info("Kept the %s (few labels: the latest, not chosen on validation).", keeper.best_name)
        else:
            runlog.info("Kept the %s (best validation macro-F1 %.4f).", keeper.best_name, keeper.best_f1)
    return Fitted(
        model=model, precision=precision.name, precision_reason=precision.reason, history=history,
        best_epoch=keeper.best_epoch, validation=keeper.best_metrics, selected=keeper.best_name,
        timing={
            "train_seconds": train_seconds,
            "head_init_seconds": probe_seconds,
            "train_samples_per_second": samples / train_seconds if train_seconds else None,
            "train_tokens_per_second": tokens / train_seconds if train_seconds else None,
            "optimizer_steps": step,
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        },
    )


class Keeper:
    """Selection: after each epoch, validate the current weights (and, with averaging, the running mean of the
    epochs' weights) and keep a copy of whichever is best on validation macro-F1 so far. by_validation False (too
    few validation rows to rank weights): validate for the record, but keep the latest candidate (the last epoch's
    weights, or the average of all epochs so far)."""

    def __init__(self, model: torch.nn.Module, *, average: bool, by_validation: bool = True) -> None:
        self.model = model
        self.by_validation = by_validation
        self.average = WeightAverage() if average else None
        self.best_f1 = -1.0
        self.best_epoch = 0
        self.best_name = ""
        self.best_metrics: Figures = {}
        self.state: dict[str, torch.Tensor] | None = None
        self.improved = False

    def epoch_end(self, event: EpochDone, *, validate: Callable[[], Figures], task: Task) -> HistoryRow:
        """Validate after `event`'s epoch, keep the best weights; returns the epoch's history row."""
        val = validate()
        row: HistoryRow = {"epoch": event.epoch, "step": event.step, "train_loss": event.train_loss, "val_loss": val["loss"],
               "val_accuracy": accuracy(task, val), "val_macro_f1": val["macro_f1"], "lr": event.lr,
               "seconds": event.seconds, "samples_per_second": event.samples_per_second}
        self.improved = self._consider(f"epoch {event.epoch}", event.epoch, val, None)
        if self.average is not None:
            self.average.add(self.model)
            if self.average.count > 1:
                current = self.average.swap_in(self.model)
                averaged = validate()
                self.average.restore(self.model, current)
                row.update({"avg_val_loss": averaged["loss"], "avg_val_accuracy": accuracy(task, averaged),
                            "avg_val_macro_f1": averaged["macro_f1"]})
                self.improved |= self._consider(f"average of epochs 1-{event.epoch}", event.epoch, averaged,
                                                self.average)
        return row

    def _consider(self, name: str, epoch: int, metrics: Figures, average: WeightAverage | None) -> bool:
        if self.by_validation and metrics["macro_f1"] <= self.best_f1:
            return False
        self.best_f1, self.best_epoch, self.best_name, self.best_metrics = metrics["macro_f1"], epoch, name, metrics
        self.state = average.snapshot() if average is not None else trainable_snapshot(self.model)
        return True

    def restore(self) -> bool:
        """Put the kept weights back into the model (False: nothing was kept)."""
        if self.state is None:
            return False
        load_trainable(self.model, self.state)
        return True


def _probe_head(model: torch.nn.Module, config: TrainConfig, prep: Prepared, labels: list[str], runlog: RunLog, *,
                amp: Callable[[], AbstractContextManager[object]]) -> float:
    start = time.perf_counter()
    train = prep.enc["train"]
    ids, y, doc_of = train.input_ids, prep.y_train, train.doc_of
    if prep.descriptions is not None:  # each description is one more example of its class for the probe
        rows = prep.descriptions
        ids = ids + rows.input_ids
        y = np.concatenate([y, rows.targets(prep.task, labels)])
        doc_of = None if doc_of is None else doc_of + list(range(train.n_docs, train.n_docs + len(rows.owner)))
        runlog.info("The %d label descriptions join the %d training texts the probe is fitted on.", len(rows.owner),
                    train.n_docs)
    done = fit_head_on_frozen_features(
        model, ids, y, pad_id=prep.pad_id, device=prep.device, doc_of=doc_of,
        batch_size=config.eval_batch_size, class_weight="balanced" if config.class_weights == "balanced" else None,
        seed=config.seed, amp=amp,
    )
    seconds = time.perf_counter() - start
    release_memory()
    if done:
        runlog.info("Head initialised by a linear probe on frozen features (%.0f s).", seconds)
    else:
        runlog.info("Linear-probe head init skipped: this model's head is not a single linear layer.")
    return seconds


@torch.inference_mode()
def fit_head_on_frozen_features(
    model: torch.nn.Module,
    input_ids: list[list[int]],
    y: np.ndarray,
    *,
    pad_id: int,
    device: torch.device,
    batch_size: int | None,
    class_weight: str | None,
    seed: int,
    amp: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    doc_of: list[int] | None = None,
) -> bool:
    """Linear probe, then fine-tune (LP-FT): fit the classifier head by logistic regression on the
    frozen encoder's features (the classifier's input), and copy the solution into the head. `y` holds
    class ids, or (multi-label) a 0/1 matrix: then one logistic regression per label.
    `amp` gives the autocast context for the feature pass (training precision: the features only seed
    the head, and fine-tuning follows). Returns False (nothing changed) when the head is not a single linear layer."""
    from medclf.model.embeddings import fit_logistic

    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        return False
    captured: list[torch.Tensor] = []

    def head_inputs(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        model(**inputs)
        return captured.pop()

    hook = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach().float()))
    try:
        with amp(), evaluating(model):
            features = torch.as_tensor(run_batches(head_inputs, input_ids, batching=batching_for(device, batch_size),
                                                   pad_id=pad_id, width=head.in_features, device=device))
    finally:
        hook.remove()
    if doc_of is not None:  # windows of one text: the mean of their features stands for the text
        features = torch.as_tensor(pool_logits(features.numpy(), doc_of, len(y), "mean"))
    coef, intercept = fit_logistic(features.numpy(), y, head.out_features, c=1.0, class_weight=class_weight,
                                   seed=seed, standardize=False, max_iter=2000)
    head.weight.copy_(torch.as_tensor(coef, dtype=head.weight.dtype))
    head.bias.copy_(torch.as_tensor(intercept, dtype=head.bias.dtype))
    return True


def trainable_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        if name in values:
            p.copy_(values[name])


class WeightAverage:
    """Running mean of the trainable weights at the end of each epoch (SWA-style averaging along the
    trajectory: Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better
    Generalization"). Kept in fp32; frozen weights are the same in every epoch and are left out."""

    def __init__(self) -> None:
        self.mean: dict[str, torch.Tensor] = {}
        self.count = 0

    @torch.no_grad()
    def add(self, model: torch.nn.Module) -> None:
        self.count += 1
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name not in self.mean:
                self.mean[name] = p.detach().float().clone()
            else:
                self.mean[name] += (p.detach().float() - self.mean[name]) / self.count

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {name: value.clone() for name, value in self.mean.items()}

    def swap_in(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Put the averaged weights into the model; returns the weights it replaced (for `restore`)."""
        current = trainable_snapshot(model)
        load_trainable(model, self.mean)
        return current

    def restore(self, model: torch.nn.Module, current: dict[str, torch.Tensor]) -> None:
        load_trainable(model, current)
