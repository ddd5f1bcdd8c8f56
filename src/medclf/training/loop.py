"""The one step loop, for fine-tuning and for masked-LM pretraining: AdamW, linear warmup and decay, clipping,
gradient accumulation, the gradient scaler where fp16 is chosen, length-grouped batches, the periodic memory trim.
What a batch's loss is comes from the caller (`BatchLoss`: `classification_loss` for fine-tuning, the MLM collator's
loss for pretraining). It yields an event after every batch and at the end of every epoch and decides nothing else:
logging, validation, weight averaging, selection and early stopping sit with the caller (as in spaCy's
`train_while_improving`), which stops the loop by leaving it."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medclf.config import PretrainConfig, TrainConfig
from medclf.model.batching import Encoded, collate, length_grouped_batches, pool_logits_torch
from medclf.model.modeling import PrecisionChoice, autocast, pad_multiple_for, release_memory, to_device
from medclf.training.distributed import SINGLE, Dist

TRIM_EVERY = 8
"""Optimizer steps between two `release_memory` calls (measured: peak RSS -0.2 GiB, same speed)."""


@dataclass(frozen=True)
class Schedule:
    """How many optimizer steps a run takes, and over how many epochs."""

    global_batch: int
    """Texts per batch over all processes (every process takes its shard of each global batch)."""
    accum: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    warmup: int

    @classmethod
    def plan(cls, config: TrainConfig | PretrainConfig, *, n_train: int, world: int = 1, min_steps: int = 0,
             steps: int | None = None) -> Schedule:
        """config's epochs (more where they would take fewer than `min_steps` steps), cut at config.max_steps; or
        exactly `steps` optimizer steps (pretraining's MLM-head warmup)."""
        global_batch = config.batch_size * world
        steps_per_epoch = math.ceil(math.ceil(n_train / global_batch) / config.grad_accum)
        total = max(config.epochs, math.ceil(min_steps / steps_per_epoch)) * steps_per_epoch
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        if steps is not None:
            total = steps
        return cls(global_batch=global_batch, accum=config.grad_accum, steps_per_epoch=steps_per_epoch,
                   total_steps=total, epochs=math.ceil(total / steps_per_epoch), warmup=round(config.warmup_ratio * total))

    def lr_factor(self, step: int) -> float:
        return warmup_then_decay(step, warmup=self.warmup, total=self.total_steps)


def warmup_then_decay(step: int, *, warmup: int, total: int) -> float:
    """The lr factor at `step`: linear warmup to the peak lr over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclass
class StepDone:
    """One batch went forward and backward (an optimizer step follows every `accum` batches)."""

    epoch: int
    batch: int
    """1-based index of the batch in its epoch."""
    n_batches: int
    step: int
    """Optimizer steps taken so far."""
    loss: torch.Tensor
    """The batch's loss, detached and still on the device: reading it (`float(loss)`) waits for the device."""


@dataclass
class EpochDone:
    """An epoch's batches are done; the model is in train mode and the caller may now validate it."""

    epoch: int
    step: int
    train_loss: float
    """Mean loss over the epoch's batches."""
    seconds: float
    samples: int
    tokens: int
    """Real (unpadded) tokens the epoch trained on."""
    lr: float
    last: bool
    """True when the schedule's steps are all taken."""

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def optimizer_for(model: torch.nn.Module, config: TrainConfig | PretrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases and LayerNorm weights)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
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


BatchLoss = Callable[[torch.nn.Module, list[int]], tuple[torch.Tensor, int]]
"""What one batch costs: (the model to call, wrapped in DDP where several processes train; the batch's rows) ->
(the batch's mean loss, the real (unpadded) tokens it held, counted on the host)."""


def classification_loss(
    train: Encoded, y_train: np.ndarray, *, loss_fn: torch.nn.Module, config: TrainConfig,
    precision: PrecisionChoice, pad_id: int, device: torch.device,
) -> BatchLoss:
    """Fine-tuning's batch loss: the rows' windows padded to the batch's longest, the logits (under autocast), in
    chunk mode pooled over each text's windows end to end, and `loss_fn` against the rows' targets."""
    amp = functools.partial(autocast, device, precision)
    y = torch.as_tensor(y_train)
    non_blocking = device.type == "cuda"
    pad_multiple = pad_multiple_for(device)

    def loss(net: torch.nn.Module, batch: list[int]) -> tuple[torch.Tensor, int]:
        windows = train.windows_of(batch)
        inputs = collate([train.input_ids[w] for w in windows], pad_id, pad_multiple=pad_multiple)
        tokens = int(inputs["attention_mask"].sum())  # counted on the host, before the copy
        inputs = to_device(inputs, device)
        target = y[batch].to(device, non_blocking=non_blocking)
        with amp():
            logits = net(**inputs).logits.float()
        if train.doc_of is not None:  # chunk: pool the windows' logits into one per text, end to end
            position = {d: j for j, d in enumerate(batch)}
            index = torch.tensor([position[train.doc_of[w]] for w in windows], device=device)
            logits = pool_logits_torch(logits, index, len(batch), config.pool)
        return loss_fn(logits, target), tokens

    return loss


def train_epochs(
    model: torch.nn.Module, lengths: list[int], batch_loss: BatchLoss, *, config: TrainConfig | PretrainConfig,
    schedule: Schedule, precision: PrecisionChoice, device: torch.device, dist: Dist = SINGLE,
) -> Iterator[StepDone | EpochDone]:
    """Train `model` epoch after epoch as `schedule` says, yielding a `StepDone` per batch and an `EpochDone` per
    epoch. Batches group rows of similar `lengths` (tokens per row) and are drawn from a generator seeded with
    `config.seed`, the same on every process; `batch_loss` says what each costs."""
    optimizer = optimizer_for(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")
    generator = torch.Generator().manual_seed(config.seed)
    net: torch.nn.Module = model
    if dist.active:  # gradients averaged over the processes at every backward pass (DDP)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step, accum = 0, schedule.accum
    for epoch in range(1, schedule.epochs + 1):
        model.train()
        batches = length_grouped_batches(lengths, schedule.global_batch, generator)
        if dist.active:  # this process's shard of each global batch; a last one with fewer texts than processes goes
            batches = [b[dist.rank :: dist.world] for b in batches if len(b) >= dist.world]
        batches = batches[: (schedule.total_steps - step) * accum]  # the schedule may end inside an epoch
        start = time.perf_counter()
        running = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
        samples = tokens = 0
        for i, batch in enumerate(batches, 1):
            loss, batch_tokens = batch_loss(net, batch)
            tokens += batch_tokens
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
            samples += len(batch)
            running += loss.detach()
            yield StepDone(epoch=epoch, batch=i, n_batches=len(batches), step=step, loss=loss.detach())
        seconds = time.perf_counter() - start
        last = step >= schedule.total_steps
        yield EpochDone(epoch=epoch, step=step, train_loss=float(running) / max(1, len(batches)), seconds=seconds,
                        samples=samples, tokens=tokens, lr=float(scheduler.get_last_lr()[0]), last=last)
        if last:
            return


def progress_bar(events: Iterator[StepDone | EpochDone], enabled: bool, epochs: int, every: int = 10
                 ) -> Iterator[StepDone | EpochDone]:
    """Pass the loop's events through, showing a bar per epoch with the mean loss (read from the device every
    `every` batches, not at every step)."""
    if not enabled:
        yield from events
        return
    from tqdm.auto import tqdm

    bar: Any = None
    total = torch.zeros(())
    for event in events:
        if isinstance(event, StepDone):
            if bar is None:
                bar = tqdm(total=event.n_batches, desc=f"epoch {event.epoch}/{epochs}", unit="batch", leave=False,
                           dynamic_ncols=True)
                total = torch.zeros((), device=event.loss.device)
            total += event.loss
            bar.update(1)
            if event.batch % every == 0 or event.batch == event.n_batches:
                bar.set_postfix(loss=f"{float(total) / event.batch:.4f}")
        elif bar is not None:
            bar.close()
            bar = None
        yield event
