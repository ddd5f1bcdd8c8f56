"""The `medclf` command line: a thin typer layer over the library functions.

Logging is configured here and only here. User errors (MedclfError) become one
sentence on stderr and exit status 2; anything unexpected exits 1 with a short
message, and the traceback only with --debug. Raw input text is never printed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from medclf._version import __version__
from medclf.config import INFER_PRECISIONS, LoadOptions, PretrainConfig, TrainConfig
from medclf.errors import MedclfError, environment_error
from medclf.logs import configure_logging

app = typer.Typer(
    name="medclf",
    help="Fine-tune, evaluate and use BERT-family classifiers for medical text. Offline by default.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # tracebacks with locals would print patient text
)
log = logging.getLogger("medclf")
_state = {"debug": False, "quiet": False}
T = TypeVar("T")
D = TrainConfig()  # the CLI's defaults are the config's defaults
PD = PretrainConfig(data="-")  # pretrain's defaults (the data is always given)
CHUNK_ROWS = 10_000
RunDirArg = Annotated[str, typer.Argument(help="A run directory written by `medclf train`.")]
InputOpt = Annotated[str | None, typer.Option("--input", "-i", help="A .txt file (one text per line) or a CSV/TSV/JSONL/Parquet table.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Texts per batch (default: 16 on a CPU; on a GPU as many as fit 65,536 padded tokens).")]
InferPrecisionOpt = Annotated[str, typer.Option("--precision", help=f"{' | '.join(INFER_PRECISIONS)}: auto runs bf16 autocast on a CUDA GPU that supports it and fp32 elsewhere (PyTorch backend).")]
TextsArg = Annotated[list[str] | None, typer.Argument(help="Texts to read (or use --input).")]
DropEmptyOpt = Annotated[bool, typer.Option("--drop-empty", help="Skip empty texts instead of refusing the input.")]
LongTextOpt = Annotated[
    str | None,
    typer.Option("--long-text", help="truncate | head-tail | chunk for texts over the run's --max-length. Default: as the run was trained (chunk reads a long text in windows and pools them, even with a run trained on short texts)."),
]
BackendOpt = Annotated[
    str,
    typer.Option("--backend", help="auto | torch | onnx | onnx-int8. auto: the int8 ONNX model if `medclf export` wrote one, else the fp32 ONNX model, else PyTorch."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medclf {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for unexpected errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and results; no progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug-level log messages.")] = False,
) -> None:
    _state["debug"] = debug
    _state["quiet"] = quiet
    configure_logging(quiet=quiet, verbose=verbose)


def _guard(fn: Callable[[], T], *, writes: object = None) -> T:
    """Run a command: a user error or a fault of the environment (disk full, read-only or unwritable folder, a file
    gone mid-read) is one sentence and exit 2; `writes` names the command's output for faults that carry no path."""
    try:
        return fn()
    except MedclfError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("Interrupted; nothing was written under the final output name.", err=True)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        fault = environment_error(exc, path=None if writes is None else str(writes))
        if fault is not None and not _state["debug"]:
            typer.echo(f"Error: {fault} Nothing was written under the final output name.", err=True)
            raise typer.Exit(2) from None
        if _state["debug"]:
            raise
        typer.echo(
            f"Error: unexpected {type(exc).__name__}; re-run with `medclf --debug ...` for the traceback.", err=True
        )
        raise typer.Exit(1) from None


def _progress() -> bool:
    return not _state["quiet"] and sys.stderr.isatty()


# ---------------------------------------------------------------- train

DataOpt = Annotated[
    str | None,
    typer.Option("--data", help="Training table: CSV, TSV, JSONL or Parquet ('-' = CSV on stdin). Default: the embedded demo."),
]
TextColOpt = Annotated[
    list[str] | None,
    typer.Option("--text-column", help="Text column; repeat to join several (title + abstract). Default: 'text' or the only text column."),
]
LabelColOpt = Annotated[
    list[str] | None,
    typer.Option("--label-column", help="Label column (strings or integers). Default: 'label' or the only label-like column. With --multi-label: one column of delimited labels, or repeat it for several 0/1 columns, one per label."),
]


@app.command()
def train(
    data: DataOpt = None,
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    multi_label: Annotated[bool, typer.Option("--multi-label", help="Several labels per text (or none): sigmoid outputs, BCE loss, one threshold per label tuned on validation for that label's F1.")] = D.multi_label,
    label_sep: Annotated[str, typer.Option("--label-sep", help="--multi-label with one label column: the separator between a row's labels.")] = D.label_sep,
    group_column: Annotated[str | None, typer.Option("--group-column", help="Column naming each row's patient or trial: no group is split between training and the test/validation parts (or the folds of `cv`).")] = None,
    test_data: Annotated[str | None, typer.Option("--test-data", help="Separate test table. Default: a stratified 20% split of --data.")] = None,
    val_data: Annotated[str | None, typer.Option("--val-data", help="Separate validation table. Default: a stratified 10% slice of the training part.")] = None,
    model: Annotated[str, typer.Option("--model", help="'default' (packaged MiniLM), a local Hugging Face model directory, or a hub id.")] = "default",
    output: Annotated[str | None, typer.Option("--output", "-o", help="Run directory to create. Default: runs/<timestamp>.")] = None,
    method: Annotated[str, typer.Option("--method", help="finetune (train the encoder and a head) | embeddings (logistic regression on frozen mean-pooled embeddings: one pass per text, fast on CPU) | zero-shot (classes from --label-descriptions; no labelled row trains it, the data's validation part calibrates and its test part measures it).")] = D.method,
    few_shot: Annotated[str, typer.Option("--few-shot", help="auto (when the validation part cannot rank weights: under 30 rows, or a multi-label label with no positive there; then at least 50 steps, last or averaged weights, C by cross-validation, thresholds 0.5) | on | off.")] = D.few_shot,
    label_descriptions: Annotated[str | None, typer.Option("--label-descriptions", help="A table of label,description (or JSON {\"label\": \"description\"}): the classes of --method zero-shot; with finetune and embeddings the descriptions join the rows the head is first fitted on.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training data.")] = D.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = D.batch_size,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, linear warmup then decay).")] = D.lr,
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens per text; longer texts are cut.")] = D.max_length,
    long_text: Annotated[str, typer.Option("--long-text", help="truncate | head-tail | chunk: how texts over --max-length are handled (saved with the run). chunk: overlapping windows whose logits are pooled into one prediction.")] = D.long_text,
    stride: Annotated[int | None, typer.Option("--stride", help="chunk: tokens shared by consecutive windows. Default: a quarter of the window.")] = None,
    max_chunks: Annotated[int, typer.Option("--max-chunks", help="chunk: most windows per text (spread evenly over a longer one); bounds memory.")] = D.max_chunks,
    pool: Annotated[str, typer.Option("--pool", help="chunk: max | mean of the window logits (max: the most telling window decides; measured better on long notes).")] = D.pool,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")] = None,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Batches per optimizer step (gradients summed): an effective batch of --batch-size x K with one batch's memory.")] = D.grad_accum,
    average_epochs: Annotated[bool, typer.Option("--average-epochs/--no-average-epochs", help="Also try the running average of the epoch-end weights; keep whichever of epochs and averages is best on validation.")] = D.average_epochs,
    patience: Annotated[int | None, typer.Option("--patience", help="Stop when validation macro-F1 has not improved for this many epochs. Default: run all epochs.")] = None,
    attention_dropout: Annotated[float | None, typer.Option("--attention-dropout", help="Dropout on attention probabilities while fine-tuning; 0 uses PyTorch's fused attention (faster).")] = D.attention_dropout,
    freeze_embeddings: Annotated[bool, typer.Option("--freeze-embeddings/--train-embeddings", help="Keep the embedding block fixed while fine-tuning (faster, less memory).")] = D.freeze_embeddings,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the split, initialisation and batch order.")] = D.seed,
    precision: Annotated[str, typer.Option("--precision", help="auto | fp32 | bf16 | fp16. auto: bf16 only where the hardware runs it fast.")] = D.precision,
    class_weights: Annotated[str, typer.Option("--class-weights", help="none | balanced (weight the loss by inverse class frequency; --multi-label: pos_weight = negatives/positives per label).")] = D.class_weights,
    head_init: Annotated[str, typer.Option("--head-init", help="random | linear-probe (fit the head on frozen features before fine-tuning).")] = D.head_init,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="Fit temperature scaling on the validation part so that probabilities match observed frequencies (changes no predicted label).")] = D.calibrate,
    drop_empty: Annotated[bool, typer.Option("--drop-empty", help="Skip rows with an empty text or label instead of refusing the file.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run at --output.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | mps.")] = "auto",
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the model's repository (off by default; only for models you trust).")] = False,
    track: Annotated[str, typer.Option("--track", help="none | mlflow: also log the finished run (options, per-epoch and test figures, report files; never text) to MLflow: MLFLOW_TRACKING_URI, else MLflow's local default ./mlflow.db with artifacts in ./mlruns. Needs `pip install 'medclf[track]'`.")] = D.track,
    num_processes: Annotated[int, typer.Option("--num-processes", help="Train on N processes on this machine (DDP; N GPUs, or N CPU processes with gloo): starts `torchrun --nproc-per-node N -m medclf train ...` for you.")] = 1,
) -> None:
    """Fine-tune a classifier on a labelled table, evaluate it on a held-out test part, and save the run."""

    options = dict(locals())

    def run() -> None:
        import os

        from medclf.core.metrics import format_table
        from medclf.training.pipeline import train as train_fn

        if num_processes > 1 and "WORLD_SIZE" not in os.environ:
            raise typer.Exit(_launch(num_processes))
        result = train_fn(_train_config(options), progress=_progress())
        if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate launch the main process reports
            typer.echo(format_table(result.test_metrics))
            typer.echo(f"Run written to {result.run_dir}")

    _guard(run, writes=output)



@app.command()
def pretrain(
    data: Annotated[str, typer.Option("--data", help="Unlabelled texts: a .txt file (one per line) or a table (CSV, TSV, JSONL, Parquet); a label column is ignored.")],
    text_column: TextColOpt = None,
    model: Annotated[str, typer.Option("--model", help="'default' (packaged MiniLM), a local Hugging Face model directory, or a hub id.")] = "default",
    output: Annotated[str | None, typer.Option("--output", "-o", help="Run directory to create; its model/ is a masked-LM checkpoint for `medclf train --model DIR/model`.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the texts.")] = PD.epochs,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per batch.")] = PD.batch_size,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Batches per optimizer step.")] = PD.grad_accum,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, linear warmup then decay).")] = PD.lr,
    mlm_probability: Annotated[float, typer.Option("--mlm-probability", help="Share of tokens masked.")] = PD.mlm_probability,
    whole_word_masking: Annotated[bool, typer.Option("--whole-word-masking", help="Mask all pieces of a word together.")] = PD.whole_word_masking,
    head_warmup_steps: Annotated[int, typer.Option("--head-warmup-steps", help="Train the new MLM head alone (encoder frozen) for this many steps first.")] = PD.head_warmup_steps,
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens per text; longer texts are cut.")] = PD.max_length,
    precision: Annotated[str, typer.Option("--precision", help="auto | fp32 | bf16 | fp16.")] = PD.precision,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | mps.")] = PD.device,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out slice, the masks and the batches.")] = PD.seed,
    drop_empty: DropEmptyOpt = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run at --output.")] = False,
    track: Annotated[str, typer.Option("--track", help="none | mlflow: also log the finished job to MLflow (MLFLOW_TRACKING_URI, else ./mlflow.db with artifacts in ./mlruns).")] = PD.track,
    num_processes: Annotated[int, typer.Option("--num-processes", help="Pretrain on N processes on this machine (DDP; N GPUs, or N CPU processes with gloo): starts `torchrun --nproc-per-node N -m medclf pretrain ...` for you.")] = 1,
) -> None:
    """Continue masked-language-model training of the encoder on unlabelled in-domain text."""

    def run() -> None:
        import os

        from medclf.config import PretrainConfig
        from medclf.training.pretrain import pretrain as pretrain_fn

        if num_processes > 1 and "WORLD_SIZE" not in os.environ:
            raise typer.Exit(_launch(num_processes))

        config = PretrainConfig(data=data, text_columns=text_column, model=model, output=output, epochs=epochs,
                                max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                                mlm_probability=mlm_probability, whole_word_masking=whole_word_masking,
                                head_warmup_steps=head_warmup_steps, max_length=max_length, precision=precision,
                                device=device, seed=seed, drop_empty=drop_empty, overwrite=overwrite, track=track)
        result = pretrain_fn(config, progress=_progress())
        if os.environ.get("RANK", "0") != "0":  # under torchrun the main process reports
            return
        m = result.metrics
        typer.echo(f"Held-out MLM loss {m['held_out_mlm_loss_before']:.4f} -> {m['held_out_mlm_loss_after']:.4f} "
                   f"(perplexity {m['perplexity_before']:.1f} -> {m['perplexity_after']:.1f})")
        typer.echo(f"Run written to {result.run_dir}; fine-tune from it with --model {result.run_dir / 'model'}")

    _guard(run, writes=output)

def _launch(processes: int) -> int:
    """Run this same `medclf train` command under torchrun with N processes; its exit status."""
    import subprocess

    if processes < 1:
        raise MedclfError(f"--num-processes must be at least 1, got {processes}.")
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--num-processes":
            skip = True
        elif not arg.startswith("--num-processes="):
            args.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m", "medclf",
           *args]
    log.info("Starting %d training processes (torchrun).", processes)
    return subprocess.call(cmd)


def _train_config(options: dict[str, object]) -> TrainConfig:
    """The TrainConfig of `train`'s (and `cv`'s) options: the CLI's names are the config's, but for the
    repeatable --text-column."""
    values = {k: v for k, v in options.items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**values, text_columns=options["text_column"])  # type: ignore[arg-type]


def cv(folds: int = 5, workers: int | None = None, **options: object) -> None:
    """Cross-validate: train and test once per fold with `train`'s options (stratified folds, or grouped by
    --group-column so no patient's rows sit on both sides); per-fold figures, mean and 95% interval."""

    def run() -> None:
        from medclf.training.cv import CV_FILE, CV_TABLE, cross_validate

        if int(options.get("num_processes", 1) or 1) > 1:  # type: ignore[call-overload]
            raise MedclfError("--num-processes does not apply to cv; --workers runs folds in parallel instead.")

        result = cross_validate(_train_config(options), folds=folds, progress=_progress(), workers=workers)
        typer.echo((result.output / CV_TABLE).read_text(encoding="utf-8"))
        typer.echo(f"Folds written to {result.output} ({CV_FILE}, {CV_TABLE}, fold-1 ... fold-{folds})")

    _guard(run, writes=options.get("output"))


def audit(folds: int = 5, workers: int | None = None, id_column: list[str] | None = None, keep_text: bool = False,
          fix: bool = False, accept_top: int | None = None, **options: object) -> None:
    """Find probably wrong labels: out-of-fold probabilities from cross-validation (train's options), ranked by
    confident learning (cleanlab); issues.csv, audit.md, out-of-fold probabilities, and with --fix a corrected copy."""

    def run() -> None:
        from medclf.training.audit import AUDIT_TABLE, ISSUES_FILE
        from medclf.training.audit import audit as audit_fn

        if int(options.get("num_processes", 1) or 1) > 1:  # type: ignore[call-overload]
            raise MedclfError("--num-processes does not apply to audit; --workers runs folds in parallel instead.")
        if fix and accept_top is None:
            raise MedclfError("--fix applies only suggestions you accept: add --accept-top K (the K top-ranked issues "
                              "of an earlier audit's issues.csv).")
        if accept_top is not None and not fix:
            raise MedclfError("--accept-top goes with --fix (which writes the corrected copy); add --fix.")
        result = audit_fn(_train_config(options), folds=folds, workers=workers, id_columns=id_column,
                          keep_text=keep_text, fix_top=accept_top, progress=_progress())
        typer.echo((result.output / AUDIT_TABLE).read_text(encoding="utf-8"))
        typer.echo(f"Audit written to {result.output} ({ISSUES_FILE}: {len(result.issues)} rows flagged of "
                   f"{result.n_rows})" + (f"; corrected copy {result.fixed}" if result.fixed else ""))

    _guard(run, writes=options.get("output"))


def _with_train_options(fn: Callable[..., None], name: str, extra: list[tuple[str, object, object]],
                        defaults: dict[str, object] | None = None) -> None:
    """Register `fn` as command `name` with every option of `train` (one definition, so they never drift apart)
    after its own `extra` options (name, default, Annotated type); `defaults` changes some of train's defaults."""
    import inspect
    import typing

    own = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, d, a in extra]
    hints = typing.get_type_hints(train, include_extras=True)  # the real Annotated[...] objects, not strings
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name],
                        default=(defaults or {}).get(p.name, p.default))
              for p in inspect.signature(train).parameters.values()]
    fn.__signature__ = inspect.Signature([*own, *params])  # type: ignore[attr-defined]
    fn.__annotations__ = {**{p.name: p.annotation for p in [*own, *params]}, "return": None}
    app.command(name=name)(fn)


FoldsOpt = Annotated[int, typer.Option("--folds", help="Number of folds; each row is tested once.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Folds trained at once, each in its own process. Default: one per CPU core (1 on a GPU).")]


def _register_commands() -> None:
    _with_train_options(cv, "cv", [("folds", 5, FoldsOpt), ("workers", None, WorkersOpt)])
    _with_train_options(audit, "audit", [
        ("folds", 5, FoldsOpt), ("workers", None, WorkersOpt),
        ("id_column", None, Annotated[list[str] | None, typer.Option("--id-column", help="Column(s) that identify a row (a note id); copied into issues.csv beside the row number.")]),
        ("keep_text", False, Annotated[bool, typer.Option("--keep-text", help="Copy the text into issues.csv (off: it carries no text).")]),
        ("fix", False, Annotated[bool, typer.Option("--fix", help="Write a copy of the data (fixed.<ext> in the audit directory) with the --accept-top suggestions applied; the file given is never changed.")]),
        ("accept_top", None, Annotated[int | None, typer.Option("--accept-top", help="With --fix: relabel the K top-ranked issues to their suggested label.")]),
    ], defaults={"method": "embeddings"})


# ---------------------------------------------------------------- evaluate


@app.command()
def evaluate(
    run_dir: RunDirArg,
    data: Annotated[str, typer.Option("--data", help="Labelled table to evaluate on (CSV, TSV, JSONL, Parquet).")],
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write the metrics as JSON to this file.")] = None,
    batch_size: BatchOpt = None,
    precision: InferPrecisionOpt = "auto",
    drop_empty: Annotated[bool, typer.Option("--drop-empty", help="Skip rows with an empty text or label.")] = False,
    backend: BackendOpt = "auto",
    long_text: LongTextOpt = None,
) -> None:
    """Accuracy, macro/weighted F1, per-class figures, confusion matrix, loss and ROC-AUC on a labelled table
    (multi-label runs: micro/macro/samples F1, subset accuracy, Hamming loss, per-label figures)."""

    def run() -> None:
        from medclf.core.metrics import format_table
        from medclf.inference.evaluation import evaluate as evaluate_fn

        metrics = evaluate_fn(
            run_dir, data=data, text_columns=text_column, label_column=label_column,
            drop_empty=drop_empty, output=output,
            options=LoadOptions(backend=backend, batch_size=batch_size, precision=precision, long_text=long_text),
        )
        typer.echo(format_table(metrics))
        if "confusion_matrix" in metrics:
            typer.echo("confusion matrix (rows: true, columns: predicted; order as above):")
            for row in metrics["confusion_matrix"]:
                typer.echo("  " + " ".join(f"{v:5d}" for v in row))
        if output:
            typer.echo(f"Metrics written to {output}")

    _guard(run, writes=output)


# ---------------------------------------------------------------- predict


@app.command()
def predict(
    run_dir: RunDirArg,
    texts: TextsArg = None,
    input: InputOpt = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write CSV, JSONL or Parquet (by extension); it appears only when complete. Default: JSONL on stdout.")] = None,
    text_column: TextColOpt = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Give only the K most probable classes per text.")] = None,
    batch_size: BatchOpt = None,
    precision: InferPrecisionOpt = "auto",
    keep_text: Annotated[bool, typer.Option("--keep-text", help="Copy the text column(s) into the output (off: outputs carry no text).")] = False,
    drop_empty: DropEmptyOpt = False,
    backend: BackendOpt = "auto",
    long_text: LongTextOpt = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Rows of --input read, classified and written at a time (memory stays flat however large the file).")] = CHUNK_ROWS,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted --input/--output job from its last complete chunk (same input, same options).")] = False,
    engine: Annotated[str, typer.Option("--engine", help="local (this process) | spark (a pandas UDF on Spark: --input and --output are read and written by Spark; needs `pip install 'medclf[spark]'` and Java).")] = "local",
    spark_master: Annotated[str, typer.Option("--spark-master", help="--engine spark: the Spark master URL (local[*] runs Spark on this machine).")] = "local[*]",
) -> None:
    """Label new texts: the predicted label and the probability of every class, for each text."""

    def run() -> None:
        from medclf.inference.files import predict_file

        if engine not in ("local", "spark"):
            raise MedclfError(f"--engine must be local or spark, not {engine!r}.")
        options = LoadOptions(backend=backend, batch_size=batch_size, precision=precision, long_text=long_text)
        if engine == "spark":
            from medclf.inference.spark import predict_spark_file

            if input is None or output is None:
                raise MedclfError("--engine spark reads --input and writes --output; pass both.")
            local_only = [name for name, given in (("--top-k", top_k is not None), ("--drop-empty", drop_empty),
                                                   ("--resume", resume), ("--chunk-rows", chunk_rows != CHUNK_ROWS)) if given]
            if local_only:  # Spark partitions, retries and writes by itself: these options have no meaning there
                raise MedclfError(f"--engine spark does not take {', '.join(local_only)} (Spark splits, retries and "
                                  "writes the job itself); leave them out or use --engine local.")
            count = predict_spark_file(run_dir, input=input, output=output, text_columns=text_column,
                                       keep_text=keep_text, master=spark_master, options=options)
            log.info("Wrote %d predictions to %s", count, output)
            return

        count = predict_file(
            run_dir, texts=texts, input=input, output=output, text_columns=text_column, top_k=top_k,
            keep_text=keep_text, drop_empty=drop_empty, chunk_rows=chunk_rows, options=options, resume=resume, progress=_progress() and output is not None,
        )
        if output:
            log.info("Wrote %d predictions to %s", count, output)

    _guard(run, writes=output)


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
    batch_size: BatchOpt = None,
    backend: BackendOpt = "auto",
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

    _guard(run, writes=output)


@app.command()
def card(
    run_dir: RunDirArg,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write the card here instead of RUN/model/README.md.")] = None,
) -> None:
    """(Re)write a run's model card, RUN/model/README.md (Hugging Face format), from the run's files."""

    def run() -> None:
        from pathlib import Path

        from medclf.reporting.card import model_card, write_card
        from medclf.run.artifacts import METRICS_FILE, atomic_write_text, is_run_dir, read_json
        from medclf.run.runspec import RunSpec

        if not is_run_dir(run_dir):
            raise MedclfError(f"{run_dir} is not a medclf run directory; pass the --output of a `medclf train` run.")
        if output is None:
            log.info("Model card written to %s", write_card(run_dir))
        else:
            atomic_write_text(Path(output), model_card(RunSpec.read(run_dir), read_json(Path(run_dir) / METRICS_FILE),
                                                       name=Path(run_dir).resolve().name))
            log.info("Model card written to %s", output)

    _guard(run, writes=output or run_dir)


@app.command()
def runs(
    folder: Annotated[str, typer.Argument(help="The folder that holds the runs (searched at any depth).")] = "runs",
    sort: Annotated[str, typer.Option("--sort", help="Column to sort by: created | macro_f1 | accuracy | train_seconds | run | encoder | method | data.")] = "created",
    descending: Annotated[bool, typer.Option("--descending", help="Largest (or newest) first.")] = False,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Also write the table as CSV.")] = None,
) -> None:
    """Compare runs: one row per run and cross-validation under FOLDER (data hash, encoder, method, options, test
    macro-F1 with its interval, training time)."""

    def run() -> None:
        from pathlib import Path

        from medclf.reporting.runs import COLUMNS, find_runs, format_runs
        from medclf.run.artifacts import atomic_write_text

        if sort not in COLUMNS:
            raise MedclfError(f"--sort {sort!r} is not a column; use one of {', '.join(COLUMNS)}.")
        frame = find_runs(folder)
        if frame.empty:
            raise MedclfError(f"No medclf runs under {folder}; pass the folder your --output runs are in.")
        frame = frame.sort_values(sort, ascending=not descending, kind="stable", na_position="last")
        typer.echo(format_runs(frame), nl=False)
        if output:
            atomic_write_text(Path(output), frame.to_csv(index=False, float_format="%.6f"))
            log.info("Wrote %d runs to %s", len(frame), output)

    _guard(run, writes=output)


# ---------------------------------------------------------------- explain


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
    backend: BackendOpt = "torch",
    long_text: LongTextOpt = None,
) -> None:
    """Which words pushed the model toward a label: per-word attribution scores, as HTML or JSON."""

    def run() -> None:
        from medclf.inference.files import explain_file

        count = explain_file(run_dir, texts=texts, input=input, output=output, method=method, target=target,
                             steps=steps, text_columns=text_column, drop_empty=drop_empty,
                             options=LoadOptions(backend=backend, long_text=long_text))
        if output:
            log.info("Wrote %d explanations to %s", count, output)

    _guard(run, writes=output)


# ---------------------------------------------------------------- export


@app.command()
def export(
    run_dir: RunDirArg,
    format: Annotated[str, typer.Option("--format", help="Export format; onnx is the one there is.")] = "onnx",
    quantize: Annotated[str, typer.Option("--quantize", help="none | int8: also write model.int8.onnx (int8 weights), checked for top-label agreement.")] = "int8",
    output: Annotated[str | None, typer.Option("--output", "-o", help="Folder to write. Default: RUN_DIR/onnx (where --backend auto finds it).")] = None,
    data: Annotated[str | None, typer.Option("--data", help="Texts to check the export on (any table `predict --input` reads; a sample of 256). Default: the packaged demo notes.")] = None,
    text_column: TextColOpt = None,
    int8_recipe: Annotated[str, typer.Option("--int8-recipe", help="auto (fastest recipe that passes the 99% check) | dynamic (fastest) | blockwise-128 | blockwise-32 (most accurate, slowest).")] = "auto",
) -> None:
    """Export a run to ONNX for fast CPU inference; the export is checked against PyTorch before it is written."""

    def run() -> None:
        if format != "onnx":
            raise MedclfError(f"--format must be onnx, not {format!r}.")
        from medclf.export.onnx import PARITY_TOLERANCE, export_onnx

        result = export_onnx(run_dir, quantize=quantize, output=output, data=data, text_columns=text_column,
                             int8_recipe=int8_recipe)
        typer.echo(f"fp32: {result.fp32_file}, max |probability difference| vs PyTorch {result.fp32_max_abs_diff:.1e} "
                   f"on {result.n_check_texts} texts (limit {PARITY_TOLERANCE:.0e})")
        for tried in result.int8_tried:
            if "error" in tried:
                typer.echo(f"int8 ({tried['recipe']}): does not run on this model in ONNX Runtime, skipped")
                continue
            kept = "kept" if tried["recipe"] == result.int8_recipe else "rejected"
            typer.echo(f"int8 ({tried['recipe']}): same prediction as PyTorch on {100 * tried['agreement']:.1f}% of "
                       f"{result.n_check_texts} texts, {kept}")
        if result.int8_skipped:
            typer.echo(f"int8: {result.int8_skipped}; model.int8.onnx was not written", err=True)
        typer.echo(f"Export written to {result.output_dir}")

    _guard(run, writes=output or run_dir)


# ---------------------------------------------------------------- serve


@app.command()
def serve(
    run_dir: RunDirArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. 127.0.0.1 (this machine only) by default; 0.0.0.0 opens it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    backend: BackendOpt = "auto",
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most texts per request, and per forward pass when the server batches concurrent requests.")] = 64,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Most characters per text; longer ones get 413.")] = 20_000,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Most texts waiting for the model; beyond it requests get 503 with Retry-After.")] = 1024,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="How long a batch waits for more requests when the queue is short.")] = 5.0,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="Name of an environment variable holding the API key; /v1/* then needs 'Authorization: Bearer KEY'.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Server processes, each with its own copy of the model.")] = 1,
    threads: Annotated[int | None, typer.Option("--threads", help="Inference threads per worker. Default: the cores divided among the workers.")] = None,
    long_text: LongTextOpt = None,
) -> None:
    """Serve a run over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, /metrics, and a page at /."""

    def run() -> None:
        from medclf.serving.app import serve as serve_fn
        from medclf.serving.settings import ServeSettings

        settings = ServeSettings(
            run_dir=run_dir, host=host, port=port, backend=backend, max_batch=max_batch, max_chars=max_chars,
            max_queue=max_queue, max_wait_ms=max_wait_ms, api_key_env=api_key_env, workers=workers, threads=threads,
            long_text=long_text,
        )
        serve_fn(settings)

    _guard(run)


# ---------------------------------------------------------------- demo

DEMO_TEXTS = [
    "68-year-old man with crushing chest pain radiating to the jaw; ECG shows ST elevation in V2-V4.",
    "Itchy silvery plaques on both elbows and knees for a year; start topical steroid.",
    "Sudden slurred speech and right facial droop this morning; MRI shows an acute infarct.",
]


@app.command()
def demo(
    output: Annotated[str, typer.Option("--output", "-o", help="Run directory to create.")] = "runs/demo",
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Replace an earlier demo run.")] = True,
) -> None:
    """Train on the embedded demo data (invented snippets), predict three new texts, print the test metrics."""

    def run() -> None:
        from medclf.core.metrics import format_table
        from medclf.inference.classifier import TextClassifier
        from medclf.training.pipeline import train as train_fn

        result = train_fn(TrainConfig(output=output, overwrite=overwrite), progress=_progress())
        clf = TextClassifier.load(result.run_dir)
        typer.echo("Predictions for three new invented notes:")
        for i, (label, probs) in enumerate(zip(clf.predict(DEMO_TEXTS), clf.predict_proba(DEMO_TEXTS)), 1):
            typer.echo(f"  note {i}: {label} (p={probs.max():.2f})")
        typer.echo("Test metrics:")
        typer.echo(format_table(result.test_metrics))
        typer.echo(f"Run written to {result.run_dir}")

    _guard(run, writes=output)


_register_commands()


def main() -> None:
    app(prog_name="medclf")


if __name__ == "__main__":
    main()
