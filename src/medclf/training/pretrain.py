"""`medclf pretrain`: continued masked-language-model training of the encoder on unlabelled in-domain text.

The output's `model/` is a plain Hugging Face masked-LM checkpoint with its tokenizer (`AutoModelForMaskedLM` and
`AutoModel` load it; `medclf train --model DIR/model` fine-tunes from it). The packaged MiniLM ships no MLM head, so
the head starts random: `head_warmup_steps` trains it alone first (encoder frozen), so that its first, random
gradients do not hit the encoder. The encoder's pooler (which the MLM model does not use, and a classifier's head
reads) is carried over unchanged into the checkpoint. The held-out MLM loss and perplexity on a validation slice are
measured before and after, with the same masks.
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medclf.config import PretrainConfig
from medclf.core.columns import join_texts, resolve_columns
from medclf.core.tables import read_table, row_numbers
from medclf.errors import MedclfError
from medclf.model.batching import Encoded, encode, padded_width
from medclf.model.modeling import (
    PrecisionChoice,
    autocast,
    choose_device,
    choose_precision,
    from_pretrained,
    load_encoder,
    load_tokenizer,
    pad_multiple_for,
    resolve_model,
    to_device,
)
from medclf.run.artifacts import (
    LOG_FILE,
    METRICS_FILE,
    MODEL_DIR,
    StagedRun,
    atomic_write_json,
    atomic_write_text,
    save_pretrained_atomic,
)
from medclf.run.tracking import log_job
from medclf.training.distributed import Dist
from medclf.training.fitting import RunLog, set_seed
from medclf.training.jobs import open_job
from medclf.training.loop import BatchLoss, EpochDone, Schedule, progress_bar, train_epochs

if TYPE_CHECKING:
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

PRETRAIN_CONFIG_FILE = "pretrain_config.json"


@dataclass
class PretrainResult:
    run_dir: Path
    metrics: dict[str, Any]


def read_unlabelled(config: PretrainConfig) -> list[str]:
    """The texts of a .txt file (one per line) or a table (its text column(s); any label column is ignored)."""
    frame = read_table(config.data, allow_txt=True)
    columns, _ = resolve_columns(frame, config.text_columns, None, source=config.data, need_label=False)
    texts = join_texts(frame, columns)
    empty = [i for i, t in enumerate(texts) if t is None]
    if empty and not config.drop_empty:
        raise MedclfError(f"{config.data} has {len(empty)} empty text(s) (row(s) {row_numbers(empty)}); fill them or pass "
                          "--drop-empty.")
    kept = [t for t in texts if t is not None]
    if len(kept) < 2:
        raise MedclfError(f"{config.data} has {len(kept)} text(s); continued pretraining needs at least 2 (one held out).")
    return kept


def _held_out(texts: list[str], config: PretrainConfig) -> tuple[list[str], list[str]]:
    """(held-out, training) texts: a seeded shuffle, config.val_size of them (at least one) held out."""
    order = list(range(len(texts)))
    random.Random(config.seed).shuffle(order)
    n_val = max(1, round(config.val_size * len(texts)))
    return [texts[i] for i in order[:n_val]], [texts[i] for i in order[n_val:]]


def pretrain(config: PretrainConfig, *, progress: bool = True) -> PretrainResult:
    """Continue MLM training of config.model on config.data and write the run directory."""
    job = open_job(config, prefix="pretrain-")
    started, dist, output = job.started, job.dist, job.output
    runlog = RunLog(enabled=dist.is_main)
    progress = progress and dist.is_main
    texts = read_unlabelled(config)
    val_texts, train_texts = _held_out(texts, config)
    n_val = len(val_texts)
    source = resolve_model(config.model)
    set_seed(config.seed)
    tokenizer = load_tokenizer(source, trust_remote_code=config.trust_remote_code)
    if tokenizer.mask_token_id is None:
        raise MedclfError(f"The tokenizer of {config.model} has no mask token; masked-LM pretraining needs one.")
    offsets = config.whole_word_masking
    train_enc = encode(tokenizer, train_texts, max_length=config.max_length, token_offsets=offsets)
    val_enc = encode(tokenizer, val_texts, max_length=config.max_length, token_offsets=offsets)
    runlog.info("Pretrain: %d texts (%d held out for the MLM loss), %s masking of %.0f%% of tokens, max length %d "
                "(%d of %d training texts cut).", len(texts), n_val, "whole-word" if offsets else "token",
                100 * config.mlm_probability, config.max_length, train_enc.n_truncated, len(train_texts))

    from transformers import AutoModelForMaskedLM

    model: torch.nn.Module = from_pretrained(AutoModelForMaskedLM, source, trust_remote_code=config.trust_remote_code)
    device = dist.device or choose_device(config.device)
    precision = choose_precision(config.precision, device)
    model.to(device)
    runlog.info("Model %s on %s; precision %s (%s).", config.model, device.type, precision.name, precision.reason)
    if dist.active:
        runlog.info("Distributed: %d processes; each trains on its shard of every global batch of %d x %d texts.",
                    dist.world, config.batch_size, dist.world)
    masked = _MaskedLM(model, tokenizer, config, train_enc, val_enc, device=device, precision=precision)
    before = masked.held_out_loss()
    runlog.info("Held-out MLM loss before: %.4f (perplexity %.1f).", before, _perplexity(before))
    mlm_loss = masked.batch_loss
    head_seconds = _head_warmup(model, config, masked, precision=precision, device=device, dist=dist,
                                progress=progress, runlog=runlog) if config.head_warmup_steps else 0.0
    start = time.perf_counter()
    total, samples = _steps(model, config, train_enc, mlm_loss, precision=precision, device=device, dist=dist,
                            steps=None, progress=progress)
    samples *= dist.world  # every process saw its shard of each global batch
    seconds = time.perf_counter() - start
    after = masked.held_out_loss()
    runlog.info("Held-out MLM loss after %d steps (%.0f s, %.1f texts/s): %.4f (perplexity %.1f -> %.1f).", total,
                seconds, samples / seconds if seconds else 0.0, after, _perplexity(before), _perplexity(after))
    metrics: dict[str, Any] = {
        "held_out_texts": n_val, "train_texts": len(train_texts),
        "held_out_mlm_loss_before": before, "held_out_mlm_loss_after": after,
        "perplexity_before": _perplexity(before), "perplexity_after": _perplexity(after),
        "optimizer_steps": total, "head_warmup_steps": config.head_warmup_steps,
        "timing": {"pretrain_seconds": seconds, "head_warmup_seconds": head_seconds,
                   "samples_per_second": samples / seconds if seconds else None, "total_seconds": None},
        "precision": precision.name, "device": device.type, "processes": dist.world,
    }
    if not dist.is_main:  # the main process writes the run; the others wait for it
        dist.barrier()
        return PretrainResult(run_dir=output, metrics=metrics)
    final = _write_pretrain_run(output, config, model, tokenizer, source, metrics, runlog, started=started)
    dist.barrier()
    return PretrainResult(run_dir=final, metrics=metrics)


class _MaskedLM:
    """The masked-LM batches of one pretraining job: examples from the encodings (offsets padded for whole-word
    masking), the seeded collators, the held-out loss with the same masks every time, and the training batch loss."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, config: PretrainConfig, train_enc: Encoded, val_enc: Encoded, *,
                 device: torch.device, precision: PrecisionChoice) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.train_enc, self.val_enc, self.device = train_enc, val_enc, device
        self.amp = functools.partial(autocast, device, precision)
        self.multiple = pad_multiple_for(device)
        self._train_collator: DataCollatorForLanguageModeling | None = None

    def examples(self, enc: Encoded, rows: list[int]) -> list[dict[str, object]]:
        if self.config.whole_word_masking:  # the tokenizer pads input_ids only: the offsets are padded here too
            assert enc.token_offsets is not None
            width = padded_width(max(len(enc.input_ids[i]) for i in rows), self.multiple)
            return [{"input_ids": enc.input_ids[i],
                     "offset_mapping": enc.token_offsets[i] + [(0, 0)] * (width - len(enc.token_offsets[i]))}
                    for i in rows]
        return [{"input_ids": enc.input_ids[i]} for i in rows]

    def collator(self, seed: int | None) -> DataCollatorForLanguageModeling:
        from transformers import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(self.tokenizer, mlm_probability=self.config.mlm_probability,
                                               whole_word_mask=self.config.whole_word_masking,
                                               pad_to_multiple_of=self.multiple if self.multiple > 1 else None,
                                               seed=seed)

    @torch.inference_mode()
    def held_out_loss(self) -> float:
        """Mean MLM loss on the validation slice, with the same masks every time (a seeded collator)."""
        self.model.eval()
        fixed = self.collator(self.config.seed)
        total = count = 0.0
        n = len(self.val_enc.input_ids)
        for start in range(0, n, 32):
            batch = fixed(self.examples(self.val_enc, list(range(start, min(start + 32, n)))))
            masked = int((batch["labels"] != -100).sum())
            if masked:
                with self.amp():
                    loss = self.model(**to_device(dict(batch), self.device)).loss.float()
                total += float(loss) * masked
                count += masked
        self.model.train()
        return total / count if count else float("nan")

    def batch_loss(self, net: torch.nn.Module, rows: list[int]) -> tuple[torch.Tensor, int]:
        """A batch's MLM loss: the collator masks the rows (its own seeded generator), the model predicts the masks."""
        if self._train_collator is None:
            self._train_collator = self.collator(self.config.seed + 1)
        inputs = dict(self._train_collator(self.examples(self.train_enc, rows)))
        tokens = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else 0
        with self.amp():
            return net(**to_device(inputs, self.device)).loss, tokens


def _write_pretrain_run(output: Path, config: PretrainConfig, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, source: str,
                        metrics: dict[str, Any], runlog: RunLog, *, started: float) -> Path:
    """The run directory (a masked-LM checkpoint with the source's pooler, the config, the log, the metrics), staged
    and renamed into place; logged to MLflow where asked."""
    with StagedRun(output, overwrite=config.overwrite) as run:
        stage = run.path
        save_pretrained_atomic(model.cpu(), tokenizer, stage / MODEL_DIR)
        _carry_pooler(source, stage / MODEL_DIR, model, trust_remote_code=config.trust_remote_code)
        atomic_write_json(stage / PRETRAIN_CONFIG_FILE, {"config": asdict(config), "model_source": source})
        atomic_write_text(stage / LOG_FILE, runlog.text())
        metrics["timing"]["total_seconds"] = time.perf_counter() - started
        atomic_write_json(stage / METRICS_FILE, metrics)
    if config.track == "mlflow":
        log_job(kind="pretrain", name=run.final.name, directory=run.final,
                params={**asdict(config), "run.model_source": source},
                final={k: v for k, v in metrics.items() if not isinstance(v, dict)} | metrics["timing"],
                artifacts=[PRETRAIN_CONFIG_FILE, METRICS_FILE, LOG_FILE], seconds=metrics["timing"]["total_seconds"])
    return run.final


def _head_warmup(model: torch.nn.Module, config: PretrainConfig, masked: _MaskedLM, *, precision: PrecisionChoice,
                 device: torch.device, dist: Dist, progress: bool, runlog: RunLog) -> float:
    """Train the new MLM head alone (the encoder frozen) for config.head_warmup_steps steps; its seconds."""
    start = time.perf_counter()
    encoder: torch.nn.Module = getattr(model, "base_model")  # a transformers model: the encoder under the MLM head
    frozen = [p for p in encoder.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    _steps(model, config, masked.train_enc, masked.batch_loss, precision=precision, device=device, dist=dist,
           steps=config.head_warmup_steps, progress=progress)
    for p in frozen:
        p.requires_grad_(True)
    seconds = time.perf_counter() - start
    runlog.info("MLM head trained alone for %d steps (encoder frozen; %.0f s): loss %.4f.", config.head_warmup_steps,
                seconds, masked.held_out_loss())
    return seconds


def _steps(model: torch.nn.Module, config: PretrainConfig, enc: Encoded, mlm_loss: BatchLoss, *, precision: PrecisionChoice,
           device: torch.device, dist: Dist, steps: int | None, progress: bool) -> tuple[int, int]:
    """MLM over length-grouped batches in the one step loop (`training.loop.train_epochs`): config's schedule, or
    exactly `steps` optimizer steps; returns (optimizer steps, texts this process saw). Several processes: each takes
    its shard of every global batch (batch_size x processes texts, the same seeded order everywhere) and DDP averages
    the gradients (wrapped per phase: DDP tracks the parameters that train, the head alone, then all)."""
    schedule = Schedule.plan(config, n_train=len(enc.input_ids), world=dist.world, steps=steps)
    events = train_epochs(model, enc.lengths, mlm_loss, config=config, schedule=schedule, precision=precision,
                          device=device, dist=dist)
    samples = sum(e.samples for e in progress_bar(events, progress, schedule.epochs) if isinstance(e, EpochDone))
    return schedule.total_steps, samples


def _carry_pooler(source: str, model_dir: Path, model: torch.nn.Module, *, trust_remote_code: bool) -> None:
    """Add the source encoder's pooler to the checkpoint (the MLM model has none): a classifier fine-tuned from it
    then starts from the pooler the encoder came with, not a random one. Masked-LM loaders skip the extra keys."""
    from safetensors.torch import load_file, save_file

    encoder: torch.nn.Module = load_encoder(source, trust_remote_code=trust_remote_code)
    pooler = getattr(encoder, "pooler", None)
    weights = model_dir / "model.safetensors"
    if pooler is None or not weights.is_file():
        return
    prefix = getattr(model, "base_model_prefix", "")
    tensors = load_file(str(weights))
    for name, value in pooler.state_dict().items():
        tensors[f"{prefix}.pooler.{name}" if prefix else f"pooler.{name}"] = value.detach().cpu().contiguous()
    tmp = weights.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(weights)


def _perplexity(loss: float) -> float:
    return float(np.exp(min(loss, 50.0))) if math.isfinite(loss) else float("nan")
