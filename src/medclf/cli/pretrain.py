"""`medclf pretrain`: continued masked-language-model training on unlabelled text."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from medclf.cli._common import DeviceOpt, DropEmptyOpt, ModelOpt, OverwriteOpt, TextColOpt, app, guard, launch, progress
from medclf.config import PretrainConfig

PD = PretrainConfig(data="-")  # pretrain's defaults (the data is always given)


@app.command()
def pretrain(
    data: Annotated[str, typer.Option("--data", help="Unlabelled texts: a .txt file (one per line) or a table (CSV, TSV, JSONL, Parquet); a label column is ignored.")],
    text_column: TextColOpt = PD.text_columns,
    model: ModelOpt = PD.model,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Run directory to create; its model/ is a masked-LM checkpoint for `medclf train --model DIR/model`.")] = PD.output,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the texts.")] = PD.epochs,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")] = PD.max_steps,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per batch.")] = PD.batch_size,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Batches per optimizer step.")] = PD.grad_accum,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, linear warmup then decay).")] = PD.lr,
    mlm_probability: Annotated[float, typer.Option("--mlm-probability", help="Share of tokens masked.")] = PD.mlm_probability,
    whole_word_masking: Annotated[bool, typer.Option("--whole-word-masking", help="Mask all pieces of a word together.")] = PD.whole_word_masking,
    head_warmup_steps: Annotated[int, typer.Option("--head-warmup-steps", help="Train the new MLM head alone (encoder frozen) for this many steps first.")] = PD.head_warmup_steps,
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens per text; longer texts are cut.")] = PD.max_length,
    precision: Annotated[str, typer.Option("--precision", help="auto | fp32 | bf16 | fp16.")] = PD.precision,
    device: DeviceOpt = PD.device,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out slice, the masks and the batches.")] = PD.seed,
    drop_empty: DropEmptyOpt = PD.drop_empty,
    overwrite: OverwriteOpt = PD.overwrite,
    track: Annotated[str, typer.Option("--track", help="none | mlflow: also log the finished job to MLflow (MLFLOW_TRACKING_URI, else ./mlflow.db with artifacts in ./mlruns).")] = PD.track,
    num_processes: Annotated[int, typer.Option("--num-processes", help="Pretrain on N processes on this machine (DDP; N GPUs, or N CPU processes with gloo): starts `torchrun --nproc-per-node N -m medclf pretrain ...` for you.")] = 1,
) -> None:
    """Continue masked-language-model training of the encoder on unlabelled in-domain text."""

    def run() -> None:
        from medclf.training.pretrain import pretrain as pretrain_fn

        if num_processes > 1 and "WORLD_SIZE" not in os.environ:
            raise typer.Exit(launch(num_processes))

        config = PretrainConfig(data=data, text_columns=text_column, model=model, output=output, epochs=epochs,
                                max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                                mlm_probability=mlm_probability, whole_word_masking=whole_word_masking,
                                head_warmup_steps=head_warmup_steps, max_length=max_length, precision=precision,
                                device=device, seed=seed, drop_empty=drop_empty, overwrite=overwrite, track=track)
        result = pretrain_fn(config, progress=progress())
        if os.environ.get("RANK", "0") != "0":  # under torchrun the main process reports
            return
        m = result.metrics
        typer.echo(f"Held-out MLM loss {m['held_out_mlm_loss_before']:.4f} -> {m['held_out_mlm_loss_after']:.4f} "
                   f"(perplexity {m['perplexity_before']:.1f} -> {m['perplexity_after']:.1f})")
        typer.echo(f"Run written to {result.run_dir}; fine-tune from it with --model {result.run_dir / 'model'}")

    guard(run, writes=output)
