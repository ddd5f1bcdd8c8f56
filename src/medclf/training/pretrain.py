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
from typing import Any

import numpy as np
import torch

from medclf.config import PretrainConfig
from medclf.core.columns import join_texts, resolve_columns
from medclf.core.tables import read_table, row_numbers
from medclf.errors import MedclfError
from medclf.model.batching import encode, padded_width
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


def pretrain(config: PretrainConfig, *, progress: bool = True) -> PretrainResult:
    """Continue MLM training of config.model on config.data and write the run directory."""
    job = open_job(config, prefix="pretrain-")
    started, dist, output = job.started, job.dist, job.output
    runlog = RunLog(enabled=dist.is_main)
    progress = progress and dist.is_main
    texts = read_unlabelled(config)
    order = list(range(len(texts)))
    random.Random(config.seed).shuffle(order)
    n_val = max(1, round(config.val_size * len(texts)))
    val_texts, train_texts = [texts[i] for i in order[:n_val]], [texts[i] for i in order[n_val:]]
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

    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

    model: Any = from_pretrained(AutoModelForMaskedLM, source, trust_remote_code=config.trust_remote_code)
    device = dist.device or choose_device(config.device)
    precision = choose_precision(config.precision, device)
    model.to(device)
    runlog.info("Model %s on %s; precision %s (%s).", config.model, device.type, precision.name, precision.reason)
    if dist.active:
        runlog.info("Distributed: %d processes; each trains on its shard of every global batch of %d x %d texts.",
                    dist.world, config.batch_size, dist.world)
    amp = functools.partial(autocast, device, precision)
    multiple = pad_multiple_for(device)

    def examples(enc: Any, rows: list[int]) -> list[Any]:
        if offsets:  # the tokenizer pads input_ids only: the offsets are padded here to the batch's padded width
            width = padded_width(max(len(enc.input_ids[i]) for i in rows), multiple)
            return [{"input_ids": enc.input_ids[i],
                     "offset_mapping": enc.token_offsets[i] + [(0, 0)] * (width - len(enc.token_offsets[i]))}
                    for i in rows]
        return [{"input_ids": enc.input_ids[i]} for i in rows]

    def collator(seed: int | None) -> Any:
        return DataCollatorForLanguageModeling(tokenizer, mlm_probability=config.mlm_probability,
                                               whole_word_mask=offsets, pad_to_multiple_of=multiple if multiple > 1 else None,
                                               seed=seed)

    @torch.inference_mode()
    def held_out_loss() -> float:
        """Mean MLM loss on the validation slice, with the same masks every time (a seeded collator)."""
        model.eval()
        fixed = collator(config.seed)
        total = count = 0.0
        for start in range(0, len(val_texts), 32):
            batch = fixed(examples(val_enc, list(range(start, min(start + 32, len(val_texts))))))
            masked = int((batch["labels"] != -100).sum())
            if masked:
                with amp():
                    loss = model(**to_device(dict(batch), device)).loss.float()
                total += float(loss) * masked
                count += masked
        model.train()
        return total / count if count else float("nan")

    before = held_out_loss()
    runlog.info("Held-out MLM loss before: %.4f (perplexity %.1f).", before, _perplexity(before))
    train_collator = collator(config.seed + 1)

    def mlm_loss(net: torch.nn.Module, rows: list[int]) -> tuple[torch.Tensor, int]:
        """A batch's MLM loss: the collator masks the rows (its own seeded generator), the model predicts the masks."""
        inputs = dict(train_collator(examples(train_enc, rows)))
        tokens = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else 0
        with amp():
            return net(**to_device(inputs, device)).loss, tokens

    head_seconds = 0.0
    if config.head_warmup_steps:
        start = time.perf_counter()
        frozen = [p for p in model.base_model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        _steps(model, config, train_enc, mlm_loss, precision=precision, device=device, dist=dist,
               steps=config.head_warmup_steps, progress=progress)
        for p in frozen:
            p.requires_grad_(True)
        head_seconds = time.perf_counter() - start
        runlog.info("MLM head trained alone for %d steps (encoder frozen; %.0f s): loss %.4f.", config.head_warmup_steps,
                    head_seconds, held_out_loss())
    start = time.perf_counter()
    total, samples = _steps(model, config, train_enc, mlm_loss, precision=precision, device=device, dist=dist,
                            steps=None, progress=progress)
    samples *= dist.world  # every process saw its shard of each global batch
    seconds = time.perf_counter() - start
    after = held_out_loss()
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
    dist.barrier()
    return PretrainResult(run_dir=run.final, metrics=metrics)


def _steps(model: Any, config: PretrainConfig, enc: Any, mlm_loss: BatchLoss, *, precision: PrecisionChoice,
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


def _carry_pooler(source: str, model_dir: Path, model: Any, *, trust_remote_code: bool) -> None:
    """Add the source encoder's pooler to the checkpoint (the MLM model has none): a classifier fine-tuned from it
    then starts from the pooler the encoder came with, not a random one. Masked-LM loaders skip the extra keys."""
    from safetensors.torch import load_file, save_file

    encoder: Any = load_encoder(source, trust_remote_code=trust_remote_code)
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
