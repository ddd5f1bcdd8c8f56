"""`medclf train`, `medclf cv` and `medclf audit`: the commands that fit a classifier, all with train's options."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from medclf.cli._common import FoldsOpt, TrainOptions, WorkersOpt, guard, launch, options_command, progress
from medclf.errors import MedclfError


@options_command(TrainOptions)
def train(options: TrainOptions) -> None:
    """Fine-tune a classifier on a labelled table, evaluate it on a held-out test part, and save the run."""

    def run() -> None:
        from medclf.core.metrics import format_table
        from medclf.training.pipeline import train as train_fn

        if options.num_processes > 1 and "WORLD_SIZE" not in os.environ:
            raise typer.Exit(launch(options.num_processes))
        result = train_fn(options.config(), progress=progress())
        if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate launch the main process reports
            typer.echo(format_table(result.test_metrics))
            typer.echo(f"Run written to {result.run_dir}")

    guard(run, writes=options.output)


def _one_process(options: TrainOptions, command: str) -> None:
    if options.num_processes > 1:
        raise MedclfError(f"--num-processes does not apply to {command}; --workers runs folds in parallel instead.")


@options_command(TrainOptions)
def cv(options: TrainOptions, folds: FoldsOpt = 5, workers: WorkersOpt = None) -> None:
    """Cross-validate: train and test once per fold with `train`'s options (stratified folds, or grouped by
    --group-column so no patient's rows sit on both sides); per-fold figures, mean and 95% interval."""

    def run() -> None:
        from medclf.training.cv import CV_FILE, CV_TABLE, cross_validate

        _one_process(options, "cv")
        result = cross_validate(options.config(), folds=folds, progress=progress(), workers=workers)
        typer.echo((result.output / CV_TABLE).read_text(encoding="utf-8"))
        typer.echo(f"Folds written to {result.output} ({CV_FILE}, {CV_TABLE}, fold-1 ... fold-{folds})")

    guard(run, writes=options.output)


@options_command(TrainOptions, defaults={"method": "embeddings"})
def audit(
    options: TrainOptions,
    folds: FoldsOpt = 5,
    workers: WorkersOpt = None,
    id_column: Annotated[list[str] | None, typer.Option("--id-column", help="Column(s) that identify a row (a note id); copied into issues.csv beside the row number.")] = None,
    keep_text: Annotated[bool, typer.Option("--keep-text", help="Copy the text into issues.csv (off: it carries no text).")] = False,
    fix: Annotated[bool, typer.Option("--fix", help="Write a copy of the data (fixed.<ext> in the audit directory) with the --accept-top suggestions applied; the file given is never changed.")] = False,
    accept_top: Annotated[int | None, typer.Option("--accept-top", help="With --fix: relabel the K top-ranked issues to their suggested label.")] = None,
) -> None:
    """Find probably wrong labels: out-of-fold probabilities from cross-validation (train's options), ranked by
    confident learning (cleanlab); issues.csv, audit.md, out-of-fold probabilities, and with --fix a corrected copy."""

    def run() -> None:
        from medclf.training.audit import AUDIT_TABLE, ISSUES_FILE
        from medclf.training.audit import audit as audit_fn

        _one_process(options, "audit")
        if fix and accept_top is None:
            raise MedclfError("--fix applies only suggestions you accept: add --accept-top K (the K top-ranked issues "
                              "of an earlier audit's issues.csv).")
        if accept_top is not None and not fix:
            raise MedclfError("--accept-top goes with --fix (which writes the corrected copy); add --fix.")
        result = audit_fn(options.config(), folds=folds, workers=workers, id_columns=id_column,
                          keep_text=keep_text, fix_top=accept_top, progress=progress())
        typer.echo((result.output / AUDIT_TABLE).read_text(encoding="utf-8"))
        typer.echo(f"Audit written to {result.output} ({ISSUES_FILE}: {len(result.issues)} rows flagged of "
                   f"{result.n_rows})" + (f"; corrected copy {result.fixed}" if result.fixed else ""))

    guard(run, writes=options.output)
