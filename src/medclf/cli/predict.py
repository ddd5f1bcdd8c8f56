"""`medclf predict`, `evaluate`, `suggest` and `explain`: the commands that use a run on new texts."""

from __future__ import annotations

from typing import Annotated

import typer

from medclf.cli._common import (
    BackendOpt,
    BatchOpt,
    D,
    DropEmptyOpt,
    InferPrecisionOpt,
    InputOpt,
    L,
    LabelColOpt,
    LongTextOpt,
    RunDirArg,
    SliceColumnsOpt,
    SliceMinCountOpt,
    TextColOpt,
    TextsArg,
    app,
    guard,
    log,
    progress,
)
from medclf.config import CHUNK_ROWS, LoadOptions
from medclf.errors import MedclfError


@app.command()
def predict(
    run_dir: RunDirArg,
    texts: TextsArg = None,
    input: InputOpt = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write CSV, JSONL or Parquet (by extension); it appears only when complete. Default: JSONL on stdout.")] = None,
    text_column: TextColOpt = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Give only the K most probable classes per text.")] = None,
    batch_size: BatchOpt = L.batch_size,
    precision: InferPrecisionOpt = L.precision,
    keep_text: Annotated[bool, typer.Option("--keep-text", help="Copy the text column(s) into the output (off: outputs carry no text).")] = False,
    drop_empty: DropEmptyOpt = False,
    backend: BackendOpt = L.backend,
    long_text: LongTextOpt = L.long_text,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Rows of --input read, classified and written at a time (memory stays flat however large the file).")] = CHUNK_ROWS,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted --input/--output job from its last complete chunk (same input, same options).")] = False,
    engine: Annotated[str, typer.Option("--engine", help="local (this process) | spark (a pandas UDF on Spark: --input and --output are read and written by Spark; needs `pip install 'medclf[spark]'` and Java).")] = "local",
    spark_master: Annotated[str, typer.Option("--spark-master", help="--engine spark: the Spark master URL (local[*] runs Spark on this machine; with a cluster's master, spark://host:7077 say, the run is shipped to the executors).")] = "local[*]",
    sets: Annotated[float | None, typer.Option("--sets", help="Also give each text's conformal label set at this coverage (0.9: the set holds the true label for at least 90% of texts drawn as the run's calibration part was); single-label runs with a calibration part.")] = None,
    set_score: Annotated[str, typer.Option("--set-score", help="--sets: lac (smallest sets) | aps (sets grow with how hard a text is).")] = "lac",
    set_by_class: Annotated[bool, typer.Option("--set-by-class", help="--sets: calibrate per class, so every class keeps the coverage (imbalanced classes).")] = False,
    priors: Annotated[str | None, typer.Option("--priors", help="A priors.json of `medclf drift`: move the calibrated probabilities to the class shares it estimated on new data (Bayes' correction), so that predictions on a shifted site improve.")] = None,
    void_guarantees: Annotated[bool, typer.Option("--void-guarantees", help="--priors on a run with a deferral threshold or label sets: apply them anyway (those guarantees were calibrated on the unchanged probabilities and no longer hold).")] = False,
) -> None:
    """Label new texts: the predicted label and the probability of every class, for each text."""

    def run() -> None:
        from medclf.core.conformal import SetRequest
        from medclf.inference.files import predict_file

        request = None if sets is None else SetRequest(coverage=sets, score=set_score, by_class=set_by_class)
        if request is None and (set_score != "lac" or set_by_class):
            raise MedclfError("--set-score and --set-by-class shape the label sets of --sets; pass --sets 0.9 too.")

        if engine not in ("local", "spark"):
            raise MedclfError(f"--engine must be local or spark, not {engine!r}.")
        options = LoadOptions(backend=backend, batch_size=batch_size, precision=precision, long_text=long_text,
                              priors=priors, void_guarantees=void_guarantees)
        if engine == "spark":
            from medclf.inference.spark import predict_spark_file

            if input is None or output is None:
                raise MedclfError("--engine spark reads --input and writes --output; pass both.")
            local_only = [name for name, given in (("--top-k", top_k is not None), ("--drop-empty", drop_empty),
                                                   ("--resume", resume), ("--chunk-rows", chunk_rows != CHUNK_ROWS),
                                                   ("--sets", request is not None)) if given]
            if local_only:  # Spark partitions, retries and writes by itself: these options have no meaning there
                raise MedclfError(f"--engine spark does not take {', '.join(local_only)} (Spark splits, retries and "
                                  "writes the job itself); leave them out or use --engine local.")
            count = predict_spark_file(run_dir, input=input, output=output, text_columns=text_column,
                                       keep_text=keep_text, master=spark_master, options=options)
            log.info("Wrote %d predictions to %s", count, output)
            return

        count = predict_file(
            run_dir, texts=texts, input=input, output=output, text_columns=text_column, top_k=top_k,
            keep_text=keep_text, drop_empty=drop_empty, chunk_rows=chunk_rows, options=options, resume=resume, progress=progress() and output is not None,
            sets=request,
        )
        if output:
            log.info("Wrote %d predictions to %s", count, output)

    guard(run, writes=output)


@app.command()
def evaluate(
    run_dir: RunDirArg,
    data: Annotated[str, typer.Option("--data", help="Labelled table to evaluate on (CSV, TSV, JSONL, Parquet).")],
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write the metrics as JSON to this file.")] = None,
    batch_size: BatchOpt = L.batch_size,
    precision: InferPrecisionOpt = L.precision,
    drop_empty: Annotated[bool, typer.Option("--drop-empty", help="Skip rows with an empty text or label.")] = False,
    backend: BackendOpt = L.backend,
    long_text: LongTextOpt = L.long_text,
    slice_columns: SliceColumnsOpt = None,
    slice_min_count: SliceMinCountOpt = D.slice_min_count,
) -> None:
    """Accuracy, macro/weighted F1, per-class figures, confusion matrix, loss and ROC-AUC on a labelled table
    (multi-label runs: micro/macro/samples F1, subset accuracy, Hamming loss, per-label figures)."""

    def run() -> None:
        from medclf.core.conformal import set_lines
        from medclf.core.deferral import deferral_lines
        from medclf.core.metrics import format_table
        from medclf.core.subgroups import subgroup_lines
        from medclf.inference.evaluation import evaluate as evaluate_fn

        metrics = evaluate_fn(
            run_dir, data=data, text_columns=text_column, label_column=label_column,
            drop_empty=drop_empty, output=output,
            options=LoadOptions(backend=backend, batch_size=batch_size, precision=precision, long_text=long_text),
            slice_columns=slice_columns, slice_min_count=slice_min_count,
        )
        typer.echo(format_table(metrics))
        if "sets" in metrics:
            typer.echo("\n".join(set_lines(metrics["sets"])))
        if "deferral" in metrics:
            typer.echo("\n".join(deferral_lines(metrics["deferral"])))
        if "subgroups" in metrics:
            typer.echo("\n".join(subgroup_lines(metrics["subgroups"])))
        if "confusion_matrix" in metrics:
            typer.echo("confusion matrix (rows: true, columns: predicted; order as above):")
            for row in metrics["confusion_matrix"]:
                typer.echo("  " + " ".join(f"{v:5d}" for v in row))
        if output:
            typer.echo(f"Metrics written to {output}")

    guard(run, writes=output)


@app.command()
def suggest(
    run_dir: RunDirArg,
    pool: Annotated[str, typer.Option("--pool", help="Unlabelled texts: a .txt file (one per line) or a table (CSV, TSV, JSONL, Parquet).")],
    n: Annotated[int, typer.Option("--n", help="How many texts to suggest.")] = 100,
    strategy: Annotated[str, typer.Option("--strategy", help="margin (closest call between the top two classes) | entropy | diverse (the most uncertain, spread over the encoder's space) | random.")] = "margin",
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write CSV, JSONL or Parquet (by extension). Default: CSV on stdout.")] = None,
    text_column: TextColOpt = None,
    id_column: Annotated[list[str] | None, typer.Option("--id-column", help="Pool column(s) that identify a row; copied beside the row number.")] = None,
    keep_text: Annotated[bool, typer.Option("--keep-text", help="Copy the text into the output (off: it carries no text).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random strategy.")] = 0,
    batch_size: BatchOpt = L.batch_size,
    backend: BackendOpt = L.backend,
    drop_empty: DropEmptyOpt = False,
) -> None:
    """Rank unlabelled texts for annotation: the ones whose labels would teach the run most (uncertain, diverse)."""

    def run() -> None:
        from medclf.inference.suggest import suggest as suggest_fn

        result = suggest_fn(run_dir, pool=pool, n=n, strategy=strategy, text_columns=text_column, id_columns=id_column,
                            keep_text=keep_text, seed=seed, drop_empty=drop_empty, output=output,
                            options=LoadOptions(backend=backend, batch_size=batch_size))
        if output is None:
            typer.echo(result.frame.to_csv(index=False, float_format="%.6f"), nl=False)
        else:
            log.info("Wrote %d suggestions of %d pool texts to %s", len(result.frame), result.pool_size, output)

    guard(run, writes=output)


@app.command()
def explain(
    run_dir: RunDirArg,
    texts: TextsArg = None,
    input: InputOpt = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="F.html (words shaded by score, probabilities on top), F.json or F.jsonl (words, character offsets, scores). Default: JSONL on stdout.")] = None,
    method: Annotated[str, typer.Option("--method", help="integrated-gradients (gradients along a path from a blank input; needs PyTorch) | occlusion (the probability lost when a word is taken out).")] = "integrated-gradients",
    target: Annotated[str | None, typer.Option("--target", help="The label to explain. Default: the predicted (most probable) label.")] = None,
    steps: Annotated[int, typer.Option("--steps", help="integrated-gradients: interpolation steps (more: closer approximation, slower).")] = 32,
    text_column: TextColOpt = None,
    drop_empty: DropEmptyOpt = False,
    backend: BackendOpt = "torch",  # integrated gradients need PyTorch
    long_text: LongTextOpt = L.long_text,
) -> None:
    """Which words pushed the model toward a label: per-word attribution scores, as HTML or JSON."""

    def run() -> None:
        from medclf.inference.files import explain_file

        count = explain_file(run_dir, texts=texts, input=input, output=output, method=method, target=target,
                             steps=steps, text_columns=text_column, drop_empty=drop_empty,
                             options=LoadOptions(backend=backend, long_text=long_text))
        if output:
            log.info("Wrote %d explanations to %s", count, output)

    guard(run, writes=output)
