"""`medclf drift` (new data against a run's reference, without labels) and `medclf reference` (add one to a run)."""

from __future__ import annotations

from typing import Annotated

import typer

from medclf.cli._common import (
    BatchOpt,
    L,
    LabelColOpt,
    RunDirArg,
    SliceColumnsOpt,
    TextColOpt,
    app,
    guard,
)
from medclf.config import DriftConfig

DD = DriftConfig(data="-")  # drift's defaults


@app.command()
def drift(
    run_dir: RunDirArg,
    data: Annotated[str, typer.Option("--data", help="The new data: a table of texts (CSV, TSV, JSONL, Parquet); its labels, a time column and slice columns are used where present.")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Folder for drift.json, drift.md, the plots and priors.json (default runs/drift-TIMESTAMP).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier drift folder at --output.")] = False,
    alpha: Annotated[float, typer.Option("--alpha", help="False-alarm level of the decision: shift is detected when the prevalence or the text test has p < alpha / 2.")] = DD.alpha,
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    time_column: Annotated[str | None, typer.Option("--time-column", help="A column of dates: every figure per time window too (--windows of equal row count, in time order).")] = None,
    windows: Annotated[int, typer.Option("--windows", help="With --time-column: how many windows.")] = DD.windows,
    slice_columns: SliceColumnsOpt = None,
    slice_min_count: Annotated[int, typer.Option("--slice-min-count", help="Slice values seen fewer times are folded into '(other)' (they may identify people).")] = DD.slice_min_count,
    permutations: Annotated[int, typer.Option("--permutations", help="Permutations of both tests (at least 2 / alpha, or no p-value could fall below alpha / 2).")] = DD.permutations,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples of the estimated class shares' intervals.")] = DD.resamples,
    seed: Annotated[int, typer.Option("--seed")] = DD.seed,
    drop_empty: Annotated[bool, typer.Option("--drop-empty", help="Skip rows with an empty text.")] = False,
    track: Annotated[str, typer.Option("--track", help="none | mlflow: also log the figures to MLflow (never text).")] = DD.track,
    batch_size: BatchOpt = L.batch_size,
) -> None:
    """Has new data moved from what the run was trained on? Class shares estimated without labels (EM, with a test),
    a two-sample test of the texts in the run's encoder space and the slice that moved most, the model's confidence;
    with labels the measured figures, with a time column all of it per window. The run is read as its reference
    was computed (PyTorch, fp32). Exit 0: no shift detected; 3: shift detected at --alpha; 2: bad input; 1: an
    unexpected error."""

    def run() -> int:
        from medclf.inference.drift import drift as drift_fn

        config = DriftConfig(data=data, output=output, overwrite=overwrite, alpha=alpha, text_columns=text_column,
                             label_column=label_column, time_column=time_column, windows=windows,
                             slice_columns=slice_columns, slice_min_count=slice_min_count, permutations=permutations,
                             resamples=resamples, seed=seed, drop_empty=drop_empty, track=track)
        result = drift_fn(run_dir, config, batch_size=batch_size)
        typer.echo(f"Drift report written to {result.output} (drift.json, drift.md, priors.json)", err=True)
        typer.echo(result.report["summary"])
        return result.exit_code

    code = guard(run, writes=output)
    if code:
        raise typer.Exit(code)


@app.command()
def reference(
    run_dir: RunDirArg,
    data: Annotated[str, typer.Option("--data", help="A table of texts drawn as the training data was (such as its validation rows); labels, if any, are ignored.")],
    text_column: TextColOpt = None,
    drop_empty: Annotated[bool, typer.Option("--drop-empty", help="Skip rows with an empty text.")] = False,
    batch_size: BatchOpt = L.batch_size,
) -> None:
    """Add (or replace) a run's drift reference: the texts' fp32 embeddings and calibrated probabilities, never the
    texts, in RUN/reference/ (for runs trained before `medclf drift` existed, or with --no-reference)."""

    def run() -> None:
        from medclf.inference.drift import add_reference

        folder = add_reference(run_dir, data=data, text_columns=text_column, drop_empty=drop_empty,
                               batch_size=batch_size)
        typer.echo(f"Drift reference written to {folder}")

    guard(run, writes=run_dir)
