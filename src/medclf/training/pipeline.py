"""Fine-tuning: AdamW, linear warmup and decay, clipping, dynamic padding, length-grouped batches."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import platform
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclf._version import __version__
from medclf.config import TrainConfig
from medclf.core.baseline import tfidf_probabilities
from medclf.core.calibration import calibration_summary, fold_temperature, scale_thresholds, temperature_for
from medclf.core.data import (
    LabeledData,
    check_classes,
    check_label_sets,
    demo_data_path,
    load_labeled,
    stratified_split,
)
from medclf.core.metrics import bootstrap_intervals, headline
from medclf.core.tasks import Task, task_for
from medclf.errors import MedclfError
from medclf.model.batching import Encoded, collate, encode, length_grouped_batches, pool_logits, pool_logits_torch
from medclf.model.modeling import (
    autocast,
    batched_logits,
    check_max_length,
    choose_device,
    choose_precision,
    forward_batches,
    freeze_embeddings,
    load_classifier,
    load_tokenizer,
    release_memory,
    resolve_model,
)
from medclf.run.artifacts import (
    LOG_FILE,
    METRICS_FILE,
    MODEL_DIR,
    PREDICTIONS_FILE,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    publish,
    save_pretrained_atomic,
    staging_dir,
)
from medclf.run.runspec import RunSpec

log = logging.getLogger(__name__)
TRIM_EVERY = 8
"""Optimizer steps between two `release_memory` calls (measured: peak RSS -0.2 GiB, same speed)."""


@dataclass
class TrainResult:
    """What `train` returns: where the run is, and its figures."""

    run_dir: Path
    metrics: dict[str, Any]
    config: TrainConfig

    @property
    def test_metrics(self) -> dict[str, Any]:
        return self.metrics["test"]


class RunLog:
    """Log a message and keep it for the run's train.log (whatever the caller's logging setup)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.lines: list[str] = []
        self.enabled = enabled
        """False on the other processes of a multi-process run: the main process logs for all."""

    def info(self, message: str, *args: Any) -> None:
        if not self.enabled:
            return
        log.info(message, *args)
        self.lines.append(f"{datetime.now().strftime('%H:%M:%S')} {message % args if args else message}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@dataclass
class Splits:
    train: LabeledData
    val: LabeledData
    test: LabeledData
    labels: list[str]
    how: str


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def file_sha256(path: str | Path | None) -> str | None:
    if path is None or str(path) == "-":
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_training_data(config: TrainConfig) -> tuple[LabeledData, list[str]]:
    """The training table, read and validated, and its label names."""
    data = load_labeled(config.data, role="training data", **_columns(config))
    if config.multi_label:
        declared = data.label_column if isinstance(data.label_column, list) else None
        labels = check_label_sets(data.labels, source=data.source, declared=declared,
                                  sep=None if declared else config.label_sep)
    else:
        labels = check_classes(data.labels, source=data.source)
    return data, labels


def _columns(config: TrainConfig) -> dict[str, Any]:
    return {"text_columns": config.text_columns, "label_column": config.label_column, "drop_empty": config.drop_empty,
            "multi_label": config.multi_label, "label_sep": config.label_sep, "group_column": config.group_column}


def split_off(pool: LabeledData, *, fraction: float, seed: int, part: str, option: str) -> tuple[LabeledData, LabeledData]:
    """(rest of pool, a stratified slice of it): by groups too where the data has them."""
    keep, out = stratified_split(pool.labels, fraction=fraction, seed=seed, source=pool.source, part=part,
                                 option=option, groups=pool.groups)
    return pool.subset(keep), pool.subset(out)


def check_training_labels(train: LabeledData, labels: list[str]) -> None:
    missing = sorted(set(labels) - set(_label_names(train.labels)))
    if missing:
        raise MedclfError(f"Class(es) {', '.join(map(repr, missing))} have no training rows after splitting; add rows.")


def prepare_splits(config: TrainConfig) -> Splits:
    """Read and validate the data, then split it: stratified test and validation parts unless given."""
    data, labels = read_training_data(config)
    columns = {**_columns(config), "text_columns": data.text_columns, "label_column": data.label_column,
               "group_column": None}
    how = []
    grouped = f", grouped by {config.group_column}" if config.group_column else ""

    def part(path: str | None, pool: LabeledData, fraction: float, name: str) -> tuple[LabeledData, LabeledData]:
        """(rest of pool, the named part): read from `path`, or a stratified slice of `pool`."""
        if path is not None:
            held = load_labeled(path, role=f"{name} data", **columns)
            _check_known(held, labels, name)
            how.append(f"{name} from {path}")
            return pool, held
        option = "--test-data" if name == "test" else "--val-data"
        how.append(f"stratified {fraction:.0%} {name} part{grouped}" + (f", seed {config.seed}" if name == "test" else ""))
        return split_off(pool, fraction=fraction, seed=config.seed, part=name, option=option)

    train, test = part(config.test_data, data, config.test_size, "test")
    train, val = part(config.val_data, train, config.val_size, "validation")
    check_training_labels(train, labels)
    return Splits(train=train, val=val, test=test, labels=labels, how="; ".join(how))


def _label_names(values: list[Any]) -> set[str]:
    """Every label that occurs in a part (label tuples too)."""
    if values and isinstance(values[0], tuple):
        return {lab for present in values for lab in present}
    return set(values)


def _check_known(part: LabeledData, labels: list[str], name: str) -> None:
    unseen = sorted(_label_names(part.labels) - set(labels))
    if unseen:
        shown = ", ".join(repr(u) for u in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        raise MedclfError(
            f"The {name} data has {len(unseen)} label(s) never seen in training ({shown}); "
            "fix the label column or add those classes to the training data."
        )


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    try:  # one fused kernel per step instead of a dozen passes over the weights (CPU and CUDA)
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)


@torch.inference_mode()
def fit_head_on_frozen_features(
    model: torch.nn.Module,
    input_ids: list[list[int]],
    y: np.ndarray,
    *,
    pad_id: int,
    device: torch.device,
    batch_size: int,
    class_weight: str | None,
    seed: int,
    amp: Any = contextlib.nullcontext,
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
    features = torch.zeros((len(input_ids), head.in_features))
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach().float().cpu()))
    try:
        with amp():
            for batch, _ in forward_batches(model, input_ids, batch_size=batch_size, pad_id=pad_id, device=device):
                features[batch] = captured.pop()
    finally:
        hook.remove()
    if doc_of is not None:  # windows of one text: the mean of their features stands for the text
        features = torch.as_tensor(pool_logits(features.numpy(), doc_of, len(y), "mean"))
    coef, intercept = fit_logistic(features.numpy(), y, head.out_features, c=1.0, class_weight=class_weight,
                                   seed=seed, standardize=False, max_iter=2000)
    head.weight.copy_(torch.as_tensor(coef, dtype=head.weight.dtype))
    head.bias.copy_(torch.as_tensor(intercept, dtype=head.bias.dtype))
    return True


@dataclass
class Fitted:
    """What a fitting method hands back to `train`: the model to save and how it got there."""

    model: torch.nn.Module
    precision: str
    precision_reason: str
    history: list[dict[str, Any]]
    best_epoch: int
    validation: dict[str, Any]
    timing: dict[str, Any]
    selected: str = ""
    """Which weights were kept: 'epoch 2', 'average of epochs 1-3', 'C=0.1'."""


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
    dist: Any = None
    """medclf.training.distributed.Dist of a multi-process run (None: one process)."""


def train(config: TrainConfig, *, progress: bool = True, splits: Splits | None = None, plots: bool = True) -> TrainResult:
    """Train a classifier as `config` says (fine-tuning or frozen embeddings), evaluate it on the test
    part, and write the run directory. `splits`: parts made by the caller (`medclf cv` folds) instead of
    reading and splitting `config.data`. plots: write the report's PNG figures (cross-validation folds skip them)."""
    from medclf.training.distributed import distributed_state

    started = time.perf_counter()
    dist = distributed_state()
    output = Path(config.output or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if dist.active and config.output is None:
        raise MedclfError("With several processes pass --output, so that every process names the same run directory.")
    check_output_dir(output, overwrite=config.overwrite)
    progress = progress and dist.is_main

    runlog = RunLog(enabled=dist.is_main)
    splits = splits or prepare_splits(config)
    labels = splits.labels
    task = task_for(config.multi_label)
    source = resolve_model(config.model)
    check_max_length(source, config.max_length, trust_remote_code=config.trust_remote_code)
    runlog.info(
        "Data: %d train / %d validation / %d test rows, %d %s (%s).",
        len(splits.train), len(splits.val), len(splits.test), len(labels),
        "labels, several per text allowed" if task.multi_label else "classes", splits.how,
    )

    set_seed(config.seed)
    tokenizer = load_tokenizer(source, trust_remote_code=config.trust_remote_code)
    device = dist.device or choose_device(config.device)
    if dist.active:
        runlog.info("Distributed: %d processes; each trains on its shard of every global batch of %d x %d texts "
                    "(effective batch %d with gradient accumulation %d); --lr is used as given, not scaled.",
                    dist.world, config.batch_size, dist.world, config.batch_size * dist.world * config.grad_accum,
                    config.grad_accum)
    enc = {
        name: encode(tokenizer, part.texts, max_length=config.max_length, long_text=config.long_text,
                     stride=config.stride, max_chunks=config.max_chunks)
        for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    }
    for name, e in enc.items():
        if e.doc_of is not None:
            runlog.info("%s: %d texts in %d windows of at most %d tokens (%d texts longer than %d windows cover: "
                        "%.1f%% of tokens not seen).", name, e.n_docs, len(e.input_ids), config.max_length, e.n_truncated,
                        config.max_chunks, 100.0 * e.tokens_lost / max(1, e.tokens_total))
        elif e.n_truncated:
            runlog.info(
                "%s: %d of %d texts cut at max_length %d (%.1f%% of tokens lost).",
                name, e.n_truncated, len(e.input_ids), config.max_length, 100.0 * e.tokens_lost / max(1, e.tokens_total),
            )
    prep = Prepared(
        enc=enc,
        y_train=task.targets(splits.train.labels, labels),
        y_val=task.targets(splits.val.labels, labels),
        y_test=task.targets(splits.test.labels, labels),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        device=device,
        task=task,
        dist=dist,
    )
    fit = _fit_embeddings if config.method == "embeddings" else _finetune
    fitted = fit(config, source=source, labels=labels, splits=splits, prep=prep, runlog=runlog, progress=progress)
    model, y_test, pad_id = fitted.model, prep.y_test, prep.pad_id

    temperature, calibration_note = 1.0, "off (--no-calibrate)"
    if config.calibrate:  # temperature scaling on the validation part (changes no decision)
        val_logits = document_logits(model, prep.enc["val"], config, pad_id=pad_id, device=prep.device, dist=dist)
        temperature, calibration_note = temperature_for(val_logits, prep.y_val, task)
    eval_start = time.perf_counter()
    test_logits = document_logits(model, prep.enc["test"], config, pad_id=pad_id, device=prep.device, dist=dist)
    test_probs = task.probabilities(test_logits / temperature)
    test_seconds = time.perf_counter() - eval_start
    # multi-label: the thresholds tuned on validation for the kept weights decide (moved with the temperature);
    # 0.5 on the model's own sigmoid probabilities, as tools without tuning use it, is reported beside them.
    thresholds = None
    if task.multi_label:
        thresholds = scale_thresholds(np.array([fitted.validation["thresholds"][lab] for lab in labels]), temperature)
    test = task.metrics(y_test, test_probs, labels, thresholds)
    test["calibration"] = calibration_summary(test_logits, y_test, task, temperature)
    test["intervals"] = bootstrap_intervals(y_test, task.decide(test_probs, thresholds), multi_label=task.multi_label,
                                            seed=config.seed)
    # The saved model gives calibrated logits itself where its last layer is linear; otherwise the run keeps T
    # and TextClassifier divides by it.
    folded = temperature != 1.0 and fold_temperature(model, temperature)
    test["calibration"]["folded_into_model"] = folded
    test["calibration"]["note"] = calibration_note
    if task.multi_label:
        fixed = task.metrics(y_test, task.probabilities(test_logits), labels)
        test["at_threshold_0.5"] = _headline_figures(fixed)

    baseline = tfidf_probabilities(splits.train.texts, prep.y_train, splits.test.texts, len(labels),
                                   multi_label=task.multi_label)
    metrics: dict[str, Any] = {
        "test": test,
        "baseline_tfidf": None if baseline is None else _headline_figures(task.metrics(y_test, baseline, labels)),
        "task": task.name,
        "method": config.method,
        "validation": fitted.validation,
        "best_epoch": fitted.best_epoch,
        "selected": fitted.selected,
        "history": fitted.history,
        "data": {
            "how": splits.how,
            "n_train": len(splits.train),
            "n_val": len(splits.val),
            "n_test": len(splits.test),
            "class_counts": {
                name: task.counts(part.labels) for name, part in
                (("train", splits.train), ("validation", splits.val), ("test", splits.test))
            },
            "n_dropped_empty": splits.train.n_dropped,
            "truncation": {name: _truncation(e, config.max_length) for name, e in prep.enc.items()},
        },
        "timing": {
            **fitted.timing,
            "test_inference_seconds": test_seconds,
            "test_inference_samples_per_second": len(y_test) / test_seconds if test_seconds else None,
            "total_seconds": None,
        },
    }
    run_info = {
        "medclf_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "labels": labels,
        "task": task.name,
        "temperature": 1.0 if folded else temperature,
        "calibration_temperature": temperature,
        "thresholds": None if thresholds is None else {lab: float(t) for lab, t in zip(labels, thresholds)},
        "text_columns": splits.train.text_columns,
        "label_column": splits.train.label_column,
        "model_source": source,
        "device": prep.device.type,
        "method": config.method,
        "precision": fitted.precision,
        "precision_reason": fitted.precision_reason,
        "data_file": str(config.data) if config.data else str(demo_data_path()),
        "data_sha256": {
            "data": file_sha256(config.data or demo_data_path()),
            "test_data": file_sha256(config.test_data),
            "val_data": file_sha256(config.val_data),
        },
        "versions": _versions(),
        "split": splits.how,
        "processes": {"count": dist.world, "per_process_batch": config.batch_size, "grad_accum": config.grad_accum,
                      "effective_batch": config.batch_size * dist.world * config.grad_accum,
                      "lr_scaling": "none: --lr is used as given for the effective batch"},
    }
    if not dist.is_main:  # the main process writes the run; the others wait for it and report the same figures
        dist.barrier()
        return TrainResult(run_dir=output, metrics=metrics, config=config)
    stage = staging_dir(output)
    try:
        save_pretrained_atomic(model.cpu(), tokenizer, stage / MODEL_DIR)
        RunSpec(config=config, **run_info).write(stage)
        runlog.info(
            "Test: %s on %d rows; training %.1f s (%.1f samples/s).",
            headline(test).replace("   ", ", "), test["n"], metrics["timing"]["train_seconds"],
            metrics["timing"]["train_samples_per_second"] or 0.0,
        )
        cal = test["calibration"]
        runlog.info("Calibration: temperature %.3f (%s%s); test ECE %.4f -> %.4f, Brier %.4f -> %.4f.", temperature,
                    calibration_note, ", folded into the saved head" if folded else "", cal["ece_before"],
                    cal["ece_after"], cal["brier_before"], cal["brier_after"])
        atomic_write_text(stage / LOG_FILE, runlog.text())
        atomic_write_text(stage / PREDICTIONS_FILE, _predictions_csv(splits.test, labels, task, test_probs, thresholds,
                                                                     config.label_sep))
        from medclf.reporting.report import write_report

        metrics["timing"]["total_seconds"] = time.perf_counter() - started
        write_report(stage, metrics=metrics, config=config, run_info=run_info, plots=plots)
        atomic_write_json(stage / METRICS_FILE, metrics)
        final = publish(stage, output, overwrite=config.overwrite)
    except BaseException:
        import shutil

        shutil.rmtree(stage, ignore_errors=True)
        raise
    dist.barrier()
    return TrainResult(run_dir=final, metrics=metrics, config=config)


def _finetune(
    config: TrainConfig, *, source: str, labels: list[str], splits: Splits, prep: Prepared, runlog: RunLog,
    progress: bool,
) -> Fitted:
    """Fine-tune encoder and head (optionally from a linear-probe head); keep the best epoch on validation."""
    device, enc, pad_id = prep.device, prep.enc, prep.pad_id
    y_train, y_val = prep.y_train, prep.y_val
    model = load_classifier(
        source, labels=labels, attention_dropout=config.attention_dropout, trust_remote_code=config.trust_remote_code
    )
    task = prep.task
    model.config.problem_type = "multi_label_classification" if task.multi_label else "single_label_classification"
    precision = choose_precision(config.precision, device)
    model.to(device)
    runlog.info("Model %s on %s; precision %s (%s).", config.model, device.type, precision.name, precision.reason)
    if config.freeze_embeddings:
        frozen = freeze_embeddings(model)
        runlog.info("Embedding block frozen (%.1fM of %.1fM weights).", frozen / 1e6,
                    sum(p.numel() for p in model.parameters()) / 1e6)

    probe_seconds = 0.0
    if config.head_init == "linear-probe":
        probe_start = time.perf_counter()
        done = fit_head_on_frozen_features(
            model, enc["train"].input_ids, y_train, pad_id=pad_id, device=device, doc_of=enc["train"].doc_of,
            batch_size=config.eval_batch_size, class_weight="balanced" if config.class_weights == "balanced" else None,
            seed=config.seed, amp=lambda: autocast(device, precision),
        )
        probe_seconds = time.perf_counter() - probe_start
        release_memory()
        if done:
            runlog.info("Head initialised by a linear probe on frozen features (%.0f s).", probe_seconds)
        else:
            runlog.info("Linear-probe head init skipped: this model's head is not a single linear layer.")

    from medclf.training.distributed import SINGLE

    dist = prep.dist or SINGLE
    accum = config.grad_accum
    global_batch = config.batch_size * dist.world  # every process takes its shard of each global batch
    steps_per_epoch = math.ceil(math.ceil(len(splits.train) / global_batch) / accum)  # optimizer steps
    total_steps = config.epochs * steps_per_epoch
    runlog.info("Effective batch size %d (batch %d x %d process(es) x gradient accumulation %d); peak lr %g, "
                "%d optimizer steps.", global_batch * accum, config.batch_size, dist.world, accum, config.lr,
                min(total_steps, config.max_steps or total_steps))
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = _optimizer(model, config)
    warmup = round(config.warmup_ratio * total_steps)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    loss_fn = task.loss(y_train, len(labels), config.class_weights).to(device)
    y_train_t = torch.as_tensor(y_train)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")
    generator = torch.Generator().manual_seed(config.seed)
    amp = functools.partial(autocast, device, precision)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"macro_f1": -1.0}
    best_state: dict[str, torch.Tensor] | None = None
    average = WeightAverage()
    step = 0
    train_seconds = 0.0
    samples_seen = 0
    tokens_seen = 0
    train_enc = enc["train"]
    lengths = train_enc.doc_lengths
    ddp: torch.nn.Module = model
    if dist.active:  # gradients averaged over the processes at every backward pass (DDP)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    for epoch in range(1, epochs + 1):
        model.train()
        batches = length_grouped_batches(lengths, global_batch, generator)  # the same on every process (seeded)
        if dist.active:  # this process's shard of each global batch; a last one with fewer texts than processes goes
            batches = [b[dist.rank :: dist.world] for b in batches if len(b) >= dist.world]
        if config.max_steps is not None:
            batches = batches[: (total_steps - step) * accum]
        epoch_start = time.perf_counter()
        running = 0.0
        bar = _progress(batches, progress, f"epoch {epoch}/{epochs}")
        for i, batch in enumerate(bar, 1):
            windows = train_enc.windows_of(batch)
            inputs = collate([train_enc.input_ids[w] for w in windows], pad_id)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            target = y_train_t[batch].to(device)
            with amp():
                logits = ddp(**inputs).logits.float()
            if train_enc.doc_of is not None:  # chunk: pool the windows' logits into one per text, end to end
                position = {d: i for i, d in enumerate(batch)}
                index = torch.tensor([position[train_enc.doc_of[w]] for w in windows], device=device)
                logits = pool_logits_torch(logits, index, len(batch), config.pool)
            loss = loss_fn(logits, target)
            # gradient accumulation: `accum` batches (fewer at the end of an epoch) make one optimizer step,
            # each batch's loss weighted by 1/(batches in its group) so the step sees the group's mean loss
            group_start = (i - 1) // accum * accum
            group_size = min(accum, len(batches) - group_start)
            scaler.scale(loss / group_size).backward()
            if i - group_start == group_size:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % TRIM_EVERY == 0:
                    release_memory()
            samples_seen += len(batch)
            tokens_seen += int(inputs["attention_mask"].sum())
            running += loss.detach().item()
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{running / i:.4f}")
        epoch_train = time.perf_counter() - epoch_start
        train_seconds += epoch_train
        train_loss = running / max(1, len(batches))
        # Evaluation runs in fp32, as TextClassifier does, so validation and test figures are what users get.
        val = _validate(model, enc["val"], y_val, labels, config, task, pad_id=pad_id, device=device, dist=dist)
        row = {
            "epoch": epoch,
            "step": step,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_accuracy": _accuracy(val),
            "val_macro_f1": val["macro_f1"],
            "lr": scheduler.get_last_lr()[0],
            "seconds": epoch_train,
            "samples_per_second": sum(len(b) for b in batches) / epoch_train if epoch_train else 0.0,
        }
        candidates = [(f"epoch {epoch}", val, None)]
        if config.average_epochs:
            average.add(model)
            if average.count > 1:
                current = average.swap_in(model)
                averaged = _validate(model, enc["val"], y_val, labels, config, task, pad_id=pad_id, device=device,
                                     dist=dist)
                average.restore(model, current)
                row.update(avg_val_loss=averaged["loss"], avg_val_accuracy=_accuracy(averaged),
                           avg_val_macro_f1=averaged["macro_f1"])
                candidates.append((f"average of epochs 1-{epoch}", averaged, average))
        history.append(row)
        chosen = ""
        for name, metrics_, averaged_from in candidates:
            if metrics_["macro_f1"] > best["macro_f1"]:
                best = {"epoch": epoch, "weights": name, "macro_f1": metrics_["macro_f1"], "metrics": metrics_}
                best_state = averaged_from.snapshot() if averaged_from is not None else _trainable_snapshot(model)
                chosen = f"  best: {name}"
        averaged_note = (f"  averaged weights: val loss {_num(row['avg_val_loss'])} macro-F1 {row['avg_val_macro_f1']:.4f}"
                         if "avg_val_loss" in row else "")
        runlog.info(
            "epoch %d/%d  train loss %.4f  val loss %s  val %s %.4f  val macro-F1 %.4f  %.0fs (%.1f samples/s)%s%s",
            epoch, epochs, train_loss, _num(val["loss"]), _accuracy_name(task), _accuracy(val), val["macro_f1"], epoch_train,
            row["samples_per_second"], averaged_note, chosen,
        )
        if step >= total_steps:
            break
        if config.patience is not None and epoch - best["epoch"] >= config.patience:
            runlog.info("Early stop: no better validation macro-F1 for %d epoch(s).", config.patience)
            break
    if best_state is not None:
        _load_trainable(model, best_state)
        runlog.info("Kept the %s (best validation macro-F1 %.4f).", best["weights"], best["macro_f1"])

    return Fitted(
        model=model, precision=precision.name, precision_reason=precision.reason, history=history,
        best_epoch=best["epoch"], validation=best["metrics"], selected=best["weights"],
        timing={
            "train_seconds": train_seconds,
            "head_init_seconds": probe_seconds,
            "train_samples_per_second": samples_seen / train_seconds if train_seconds else None,
            "train_tokens_per_second": tokens_seen / train_seconds if train_seconds else None,
            "optimizer_steps": step,
        },
    )


def _fit_embeddings(
    config: TrainConfig, *, source: str, labels: list[str], splits: Splits, prep: Prepared, runlog: RunLog,
    progress: bool,
) -> Fitted:
    """Logistic regression on frozen, mean-pooled embeddings; the regularisation strength is picked on validation."""
    from medclf.model.embeddings import C_GRID, EmbeddingClassifier, embed_texts, fit_logistic
    from medclf.model.modeling import load_encoder

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
    class_weight = "balanced" if config.class_weights == "balanced" else None
    y_train, task = prep.y_train, prep.task
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"macro_f1": -1.0}
    for i, c in enumerate(C_GRID, 1):
        weight, bias = fit_logistic(features["train"], y_train, len(labels), c=c, class_weight=class_weight, seed=config.seed)
        probs = task.probabilities(features["val"] @ weight.T + bias)
        val = task.selection_metrics(prep.y_val, probs, labels)
        history.append({"epoch": i, "C": c, "val_loss": val["loss"], "val_accuracy": _accuracy(val),
                        "val_macro_f1": val["macro_f1"]})
        improved = val["macro_f1"] > best["macro_f1"]
        runlog.info("C=%g  val loss %s  val %s %.4f  val macro-F1 %.4f%s", c, _num(val["loss"]), _accuracy_name(task),
                    _accuracy(val), val["macro_f1"], "  best" if improved else "")
        if improved:
            best = {"epoch": i, "macro_f1": val["macro_f1"], "metrics": val, "head": (weight, bias), "C": c}
    model.set_head(*best["head"])
    selected = f"C={best['C']:g}"
    seconds = time.perf_counter() - start
    n = len(y_train)
    return Fitted(
        model=model, precision="fp32", precision_reason="embeddings are computed in fp32, as at inference",
        history=history, best_epoch=best["epoch"], validation=best["metrics"], selected=selected,
        timing={
            "train_seconds": seconds,
            "head_init_seconds": 0.0,
            "embed_seconds": embed_seconds,
            "chosen_C": best["C"],
            "train_samples_per_second": n / seconds if seconds else None,
            "train_tokens_per_second": sum(enc["train"].lengths) / seconds if seconds else None,
            "optimizer_steps": 0,
        },
    )


def _headline_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss") \
        if metrics.get("task") == "multi-label" else ("accuracy", "macro_f1", "weighted_f1")
    return {key: metrics[key] for key in keys}


def _accuracy(metrics: dict[str, Any]) -> float:
    """Accuracy, or (multi-label) subset accuracy: the share of texts whose label set is exactly right."""
    return metrics["subset_accuracy"] if metrics.get("task") == "multi-label" else metrics["accuracy"]


def _accuracy_name(task: Task) -> str:
    return "subset acc" if task.multi_label else "acc"


def _num(value: float | None) -> str:
    """A loss for the log: 'n/a' when it was not finite (metrics store None then)."""
    return "n/a" if value is None else f"{value:.4f}"


def document_logits(model: torch.nn.Module, e: Encoded, config: TrainConfig, *, pad_id: int, device: torch.device,
                    dist: Any = None) -> np.ndarray:
    """One row of logits per text: per sequence, then (chunk) pooled over each text's windows. With several
    processes each runs its share of the texts and the rows are gathered (every text once, in order)."""
    if dist is None or not dist.active:
        logits = batched_logits(model, e.input_ids, batch_size=config.eval_batch_size, pad_id=pad_id, device=device)
        return pool_logits(logits, e.doc_of, e.n_docs, config.pool)
    mine = dist.shard(e.n_docs)
    windows = e.windows_of(mine)
    logits = batched_logits(model, [e.input_ids[w] for w in windows], batch_size=config.eval_batch_size, pad_id=pad_id,
                            device=device)
    if e.doc_of is not None:
        position = {d: i for i, d in enumerate(mine)}
        logits = pool_logits(logits, [position[e.doc_of[w]] for w in windows], len(mine), config.pool)
    return dist.gather_rows(mine, logits, e.n_docs)


def _validate(
    model: torch.nn.Module, e: Encoded, y: np.ndarray, labels: list[str], config: TrainConfig, task: Task,
    *, pad_id: int, device: torch.device, dist: Any = None,
) -> dict[str, Any]:
    """Validation figures that decide which weights are kept (multi-label: at thresholds tuned on them)."""
    probs = task.probabilities(document_logits(model, e, config, pad_id=pad_id, device=device, dist=dist))
    release_memory()
    return task.selection_metrics(y, probs, labels)


def _trainable_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _load_trainable(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
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
        current = _trainable_snapshot(model)
        _load_trainable(model, self.mean)
        return current

    def restore(self, model: torch.nn.Module, current: dict[str, torch.Tensor]) -> None:
        _load_trainable(model, current)


def _truncation(e: Encoded, max_length: int) -> dict[str, Any]:
    out = {
        "max_length": max_length,
        "texts_cut": e.n_truncated,
        "share_texts_cut": e.n_truncated / max(1, e.n_docs),
        "share_tokens_lost": e.tokens_lost / max(1, e.tokens_total),
        "mean_tokens": e.tokens_total / max(1, e.n_docs),
        "mean_tokens_kept": sum(e.lengths) / max(1, e.n_docs),
    }
    if e.text_tokens:  # the length distribution of whole texts, in tokens
        out.update({f"tokens_p{q}": float(np.percentile(e.text_tokens, q)) for q in (10, 50, 90)},
                   tokens_max=int(max(e.text_tokens)))
    if e.doc_of is not None:  # chunk: texts_cut = texts longer than max_chunks windows cover
        out.update(windows=len(e.input_ids), mean_windows=len(e.input_ids) / max(1, e.n_docs))
    return out


def _predictions_csv(
    test: LabeledData, labels: list[str], task: Task, probs: np.ndarray, thresholds: np.ndarray | None, sep: str
) -> str:
    """Test predictions by source row index; the texts are left out (they may hold patient data).
    Multi-label: the true and predicted label sets joined with the run's label separator."""
    import pandas as pd

    decided = task.decide(probs, thresholds)
    if task.multi_label:
        frame = pd.DataFrame({"row": test.rows, "labels": [sep.join(present) for present in test.labels],
                              "predicted": [sep.join(task.names(d, labels)) for d in decided]})
    else:
        frame = pd.DataFrame({"row": test.rows, "label": test.labels})
        frame["predicted"] = [labels[i] for i in decided]
        frame["score"] = probs[np.arange(len(decided)), decided]
    for i, lab in enumerate(labels):
        frame[f"prob_{lab}"] = probs[:, i]
    return frame.to_csv(index=False, float_format="%.6f")


def _versions() -> dict[str, str]:
    import transformers

    return {
        "medclf": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _progress(items: list[Any], enabled: bool, desc: str) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
