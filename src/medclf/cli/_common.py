"""What every command module shares: the typer app, the error guard, the option annotations, and the train options.

A command lives in the module of its group (train.py: train, cv, audit; pretrain.py; predict.py: predict, evaluate,
suggest, explain; runs.py: card, runs; export.py; serve.py; demo.py) and registers itself on `app`; `cli.main`
imports them all. Logging is configured here and only here (the app's callback). User errors (MedclfError) become
one sentence on stderr and exit status 2, and so do faults of the environment; anything unexpected exits 1 with a
short message, and the traceback only with --debug. Raw input text is never printed.

`TrainOptions` is the one declaration of `train`'s options (each with its help and its default read from
`TrainConfig`); `train`, `cv` and `audit` take it whole through `options_command`, so the three can never drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer

from medclf._version import __version__
from medclf.config import INFER_PRECISIONS, LoadOptions, TrainConfig
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
state = {"debug": False, "quiet": False}
T = TypeVar("T")
D = TrainConfig()  # the CLI's defaults are the config's defaults
L = LoadOptions()  # and the inference commands' are those of LoadOptions


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
    state["debug"] = debug
    state["quiet"] = quiet
    configure_logging(quiet=quiet, verbose=verbose)


def guard(fn: Callable[[], T], *, writes: object = None) -> T:
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
        if fault is not None and not state["debug"]:
            typer.echo(f"Error: {fault} Nothing was written under the final output name.", err=True)
            raise typer.Exit(2) from None
        if state["debug"]:
            raise
        typer.echo(
            f"Error: unexpected {type(exc).__name__}; re-run with `medclf --debug ...` for the traceback.", err=True
        )
        raise typer.Exit(1) from None


def progress() -> bool:
    """Whether to draw progress bars: not with --quiet, and only on a terminal."""
    return not state["quiet"] and sys.stderr.isatty()


def launch(processes: int) -> int:
    """Run this same command (train or pretrain) under torchrun with N processes; its exit status."""
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


# ---------------------------------------------------------------- annotations several commands share

RunDirArg = Annotated[str, typer.Argument(help="A run directory written by `medclf train`.")]
InputOpt = Annotated[str | None, typer.Option("--input", "-i", help="A .txt file (one text per line) or a CSV/TSV/JSONL/Parquet table.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Texts per batch (default: 16 on a CPU; on a GPU as many as fit 65,536 padded tokens).")]
InferPrecisionOpt = Annotated[str, typer.Option("--precision", help=f"{' | '.join(INFER_PRECISIONS)}: auto runs bf16 autocast on a CUDA GPU that supports it and on a CPU with AMX, fp32 elsewhere (PyTorch backend).")]
TextsArg = Annotated[list[str] | None, typer.Argument(help="Texts to read (or use --input).")]
DropEmptyOpt = Annotated[bool, typer.Option("--drop-empty", help="Skip empty texts instead of refusing the input.")]
LongTextOpt = Annotated[
    str | None,
    typer.Option("--long-text", help="truncate | head-tail | chunk for texts over the run's --max-length. Default: as the run was trained (chunk reads a long text in windows and pools them, even with a run trained on short texts)."),
]
BackendOpt = Annotated[
    str,
    typer.Option("--backend", help="auto | torch | onnx | onnx-int8. auto: the int8 ONNX model where `medclf export` checked it on the run's test part (99% agreement), else the fp32 ONNX model, else PyTorch."),
]
TextColOpt = Annotated[
    list[str] | None,
    typer.Option("--text-column", help="Text column; repeat to join several (title + abstract). Default: 'text' or the only text column."),
]
LabelColOpt = Annotated[
    list[str] | None,
    typer.Option("--label-column", help="Label column (strings or integers). Default: 'label' or the only label-like column. With --multi-label: one column of delimited labels, or repeat it for several 0/1 columns, one per label."),
]
SliceColumnsOpt = Annotated[
    list[str] | None,
    typer.Option("--slice-columns", help="Column(s) to report the test figures by, comma-separated (site,sex,age_band; not model inputs): each value's figures with 95% intervals and its gap to the whole part, in metrics.json, the report and the card."),
]
SliceMinCountOpt = Annotated[
    int,
    typer.Option("--slice-min-count", help="A slice value seen fewer times than this in the part reported is folded into '(other)' (rare values can identify people); slices under 30 rows are listed, not judged."),
]
ModelOpt = Annotated[str, typer.Option("--model", help="'default' (packaged MiniLM), a local Hugging Face model directory, or a hub id.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run at --output.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | mps.")]
FoldsOpt = Annotated[int, typer.Option("--folds", help="Number of folds; each row is tested once.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Folds trained at once, each in its own process. Default: one per CPU core (1 on a GPU).")]


# ---------------------------------------------------------------- the train options (train, cv, audit)


@dataclass(frozen=True)
class TrainOptions:
    """Every option of `medclf train`, as typer declares it (Annotated: flag and help) with the default of
    `TrainConfig`. `config()` is the job's TrainConfig; --num-processes is the launcher's, not the job's."""

    data: Annotated[str | None, typer.Option("--data", help="Training table: CSV, TSV, JSONL or Parquet ('-' = CSV on stdin). Default: the embedded demo.")] = D.data
    text_column: TextColOpt = D.text_columns
    label_column: LabelColOpt = None  # TrainConfig.label_column may also be one name
    multi_label: Annotated[bool, typer.Option("--multi-label", help="Several labels per text (or none): sigmoid outputs, BCE loss, one threshold per label tuned on validation for that label's F1.")] = D.multi_label
    label_sep: Annotated[str, typer.Option("--label-sep", help="--multi-label with one label column: the separator between a row's labels.")] = D.label_sep
    group_column: Annotated[str | None, typer.Option("--group-column", help="Column naming each row's patient or trial: no group is split between training and the test/validation parts (or the folds of `cv`).")] = D.group_column
    slice_columns: SliceColumnsOpt = None
    slice_min_count: SliceMinCountOpt = D.slice_min_count
    test_data: Annotated[str | None, typer.Option("--test-data", help="Separate test table. Default: a stratified 20% split of --data.")] = D.test_data
    val_data: Annotated[str | None, typer.Option("--val-data", help="Separate validation table. Default: a stratified 10% slice of the training part.")] = D.val_data
    calibration_size: Annotated[float | None, typer.Option("--calibration-size", help="Share of the rows left after the test part kept as the calibration part (trains and selects nothing; calibrates the conformal label sets of `predict --sets`). Default: 0.1 with --target-precision, else none (the rows cost accuracy: docs/benchmarks.md).")] = D.calibration_size
    target_precision: Annotated[float | None, typer.Option("--target-precision", help="Defer to a person each text whose calibrated top probability is below the lowest threshold at which the automatic decisions reach this precision, guaranteed at level --deferral-delta; chosen on the calibration part (kept by default when this is set). Multi-label: per label, on the probability of each label's decision (present or absent); a text is deferred when any label is undecided.")] = D.target_precision
    deferral_delta: Annotated[float, typer.Option("--deferral-delta", help="--target-precision: the chance the precision guarantee may fail (over the calibration part).")] = D.deferral_delta
    model: ModelOpt = D.model
    output: Annotated[str | None, typer.Option("--output", "-o", help="Run directory to create. Default: runs/<timestamp>.")] = D.output
    method: Annotated[str, typer.Option("--method", help="finetune (train the encoder and a head) | embeddings (logistic regression on frozen mean-pooled embeddings: one pass per text, fast on CPU) | zero-shot (classes from --label-descriptions; no labelled row trains it, the data's validation part calibrates and its test part measures it).")] = D.method
    few_shot: Annotated[str, typer.Option("--few-shot", help="auto (when the validation part cannot rank weights: under 30 rows, or a multi-label label with no positive there; then at least 50 steps, last or averaged weights, C by cross-validation, thresholds 0.5) | on | off.")] = D.few_shot
    label_descriptions: Annotated[str | None, typer.Option("--label-descriptions", help="A table of label,description (or JSON {\"label\": \"description\"}): the classes of --method zero-shot; with finetune and embeddings the descriptions join the rows the head is first fitted on.")] = D.label_descriptions
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training data.")] = D.epochs
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = D.batch_size
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, linear warmup then decay).")] = D.lr
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens per text; longer texts are cut.")] = D.max_length
    long_text: Annotated[str, typer.Option("--long-text", help="truncate | head-tail | chunk: how texts over --max-length are handled (saved with the run). chunk: overlapping windows whose logits are pooled into one prediction.")] = D.long_text
    stride: Annotated[int | None, typer.Option("--stride", help="chunk: tokens shared by consecutive windows. Default: a quarter of the window.")] = D.stride
    max_chunks: Annotated[int, typer.Option("--max-chunks", help="chunk: most windows per text (spread evenly over a longer one); bounds memory.")] = D.max_chunks
    pool: Annotated[str, typer.Option("--pool", help="chunk: max | mean of the window logits (max: the most telling window decides; measured better on long notes).")] = D.pool
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")] = D.max_steps
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Batches per optimizer step (gradients summed): an effective batch of --batch-size x K with one batch's memory.")] = D.grad_accum
    average_epochs: Annotated[bool, typer.Option("--average-epochs/--no-average-epochs", help="Also try the running average of the epoch-end weights; keep whichever of epochs and averages is best on validation.")] = D.average_epochs
    patience: Annotated[int | None, typer.Option("--patience", help="Stop when validation macro-F1 has not improved for this many epochs. Default: run all epochs.")] = D.patience
    attention_dropout: Annotated[float | None, typer.Option("--attention-dropout", help="Dropout on attention probabilities while fine-tuning; 0 uses PyTorch's fused attention (faster).")] = D.attention_dropout
    freeze_embeddings: Annotated[bool, typer.Option("--freeze-embeddings/--train-embeddings", help="Keep the embedding block fixed while fine-tuning (faster, less memory).")] = D.freeze_embeddings
    seed: Annotated[int, typer.Option("--seed", help="Seed for the split, initialisation and batch order.")] = D.seed
    precision: Annotated[str, typer.Option("--precision", help="auto | fp32 | bf16 | fp16. auto: bf16 only where the hardware runs it fast.")] = D.precision
    class_weights: Annotated[str, typer.Option("--class-weights", help="none | balanced (weight the loss by inverse class frequency; --multi-label: pos_weight = negatives/positives per label).")] = D.class_weights
    head_init: Annotated[str, typer.Option("--head-init", help="random | linear-probe (fit the head on frozen features before fine-tuning).")] = D.head_init
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="Fit temperature scaling on the validation part so that probabilities match observed frequencies (changes no predicted label).")] = D.calibrate
    drift_reference: Annotated[bool, typer.Option("--reference/--no-reference", help="Keep the validation part's embeddings and calibrated probabilities (never its text) in RUN/reference/, what `medclf drift` compares new data with; --no-reference keeps none (they derive from patient text).")] = D.drift_reference
    drop_empty: Annotated[bool, typer.Option("--drop-empty", help="Skip rows with an empty text or label instead of refusing the file.")] = D.drop_empty
    overwrite: OverwriteOpt = D.overwrite
    device: DeviceOpt = D.device
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the model's repository (off by default; only for models you trust).")] = D.trust_remote_code
    track: Annotated[str, typer.Option("--track", help="none | mlflow: also log the finished run (options, per-epoch and test figures, report files; never text) to MLflow: MLFLOW_TRACKING_URI, else MLflow's local default ./mlflow.db with artifacts in ./mlruns. Needs `pip install 'medclf[track]'`.")] = D.track
    num_processes: Annotated[int, typer.Option("--num-processes", help="Train on N processes on this machine (DDP; N GPUs, or N CPU processes with gloo): starts `torchrun --nproc-per-node N -m medclf train ...` for you.")] = 1

    def config(self) -> TrainConfig:
        """The job's TrainConfig: the options' names are the config's, but for the repeatable --text-column."""
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                  if f.name not in ("text_column", "num_processes")}
        return TrainConfig(**values, text_columns=self.text_column)


def options_command(options: type, *, defaults: Mapping[str, object] | None = None
                    ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register `fn(shared, **own)` as the command `fn.__name__`: its own options (its parameters after the first)
    and then every field of the dataclass `options`, as declared there; typer parses them all and `fn` gets the
    dataclass. `defaults` changes some fields' defaults for this command (audit fits embeddings by default)."""
    hints = typing.get_type_hints(options, include_extras=True)
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                default=(defaults or {}).get(f.name, f.default)) for f in dataclasses.fields(options)]
    names = [p.name for p in shared]

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in list(inspect.signature(fn, eval_str=True).parameters.values())[1:]]

        @functools.wraps(fn)
        def command(**values: object) -> None:
            fn(options(**{name: values.pop(name) for name in names}), **values)

        signature = inspect.Signature([*own, *shared])
        setattr(command, "__signature__", signature)  # what typer reads the options from
        command.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        app.command(name=fn.__name__)(command)
        return fn

    return register
