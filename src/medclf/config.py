"""One typed, validated, serialisable config per job.

`TrainConfig` is built by the CLI or by library users, validated where it is
created (``__post_init__``), and saved with the run as ``train_config.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from medclf.errors import MedclfError

DEFAULT_MODEL = "default"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CLASS_WEIGHTS = ("none", "balanced")
DEVICES = ("auto", "cpu", "cuda", "mps")
HEAD_INITS = ("random", "linear-probe")
LONG_TEXT = ("truncate", "head-tail", "chunk")
POOLS = ("mean", "max")
METHODS = ("finetune", "embeddings", "zero-shot")
FEW_SHOT = ("auto", "on", "off")
TRACKERS = ("none", "mlflow")
"""--track: where a finished job is also logged (run/tracking.py)."""

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
INFER_BATCH_SIZE = 16
"""Texts per forward pass at inference on the CPU (measured faster than 8 or 32 on MiniLM; benchmarks/speed/bench_inference.py)."""
INFER_PRECISIONS = ("auto", "fp32", "bf16")
CHUNK_ROWS = 10_000
"""predict --chunk-rows: rows read, classified and written at a time. At MiniLM's 256 tokens a chunk's token ids and
outputs take tens of MB, and the classifier's own working memory does not grow with the chunk."""

MAX_WINDOW_TOKENS_PER_STEP = 65_536
CALIBRATION_AUTO = 0.1
"""The calibration part's share when --target-precision asks for one and --calibration-size is not given. Not carved
otherwise: on the abstracts (2,310 rows) holding 10% out cost test macro-F1 0.034 (0.003-0.064; docs/benchmarks.md,
"Conformal label sets"), so the rows are taken only where the user asks for what they buy."""
"""chunk: most tokens one training step may hold (batch_size x max_chunks x max_length). The default step
(16 x 256 tokens, no chunking) peaked at 2.7 GiB on MiniLM; activations grow with tokens per step."""



def slice_column_list(value: str | list[str] | None) -> list[str] | None:
    """--slice-columns as given (one name, 'site,sex', or a list of either) -> the column names, each once."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise MedclfError(f"slice_columns must be column names, got {value!r}.")
    names = list(dict.fromkeys(name.strip() for item in items for name in item.split(",")))
    if not names or any(not name for name in names):
        raise MedclfError("--slice-columns takes column names separated by commas (site,sex); one is empty.")
    return names


@dataclass(kw_only=True)
class TrainConfig:
    """Every option of a training run. Paths are stored as strings."""

    data: str | None = None
    """Training table (CSV, TSV, JSONL or Parquet; '-' reads CSV from stdin). None: the embedded demo."""
    text_columns: list[str] | None = None
    """Column(s) holding the text; several are joined with a newline. None: 'text' or the only text column."""
    label_column: str | list[str] | None = None
    """Column holding the label (strings or integers). None: 'label' or the only label-like column.
    multi_label: one column of delimited labels ('a|b'), or a list of several 0/1 columns, one per label."""
    multi_label: bool = False
    """Several labels per text (or none): sigmoid outputs, binary cross-entropy, one decision threshold per
    label tuned on the validation slice to maximise that label's F1 (saved with the run)."""
    label_sep: str = "|"
    """multi_label with one label column: what separates the labels of a row ('cardiology|urgent')."""
    group_column: str | None = None
    """Column naming each row's group (patient, trial): the test and validation parts (and the folds of
    `medclf cv`) never share a group with the training part. None: rows are independent."""
    slice_columns: list[str] | None = None
    """Columns to report the test figures by (site, sex, age band, note type; never model inputs): every value's
    figures with intervals and its gap to the whole part (core/subgroups.py). None: no subgroups."""
    slice_min_count: int = 10
    """A slice value seen fewer times than this in the part reported is folded into '(other)' (rare values can
    identify people)."""
    test_data: str | None = None
    """Separate test table. None: a stratified split of `data` (test_size)."""
    val_data: str | None = None
    """Separate validation table for model selection. None: a stratified slice of the training part."""
    model: str = DEFAULT_MODEL
    """'default' (the packaged MiniLM), a local Hugging Face model directory, or a hub id."""
    method: str = "finetune"
    """'finetune' (train the encoder and a head), 'embeddings' (logistic regression on frozen,
    mean-pooled encoder embeddings: one forward pass per text, minutes instead of tens of minutes on CPU), or
    'zero-shot' (no labelled row trains it: each class is the embedding of its label descriptions)."""
    few_shot: str = "auto"
    """How to train with few labels (training/fitting.FewLabels says when and what changes): auto (when the validation
    part cannot rank weights: under 30 rows, or a multi-label label without a positive there) | on | off (select
    and calibrate on validation however small it is)."""
    label_descriptions: str | None = None
    """A table of label,description (or JSON {"label": "description"}): the classes of --method zero-shot; with
    finetune and embeddings, the descriptions join the rows the head is first fitted on (core/descriptions.py)."""
    output: str | None = None
    """Run directory to create. None: runs/<timestamp> under the current directory."""
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    max_length: int = 256
    long_text: str = "head-tail"
    """How a text longer than max_length is handled: 'truncate' (keep the start), 'head-tail' (keep the first
    quarter and the last three quarters of the budget), or 'chunk' (overlapping windows of max_length, the
    window logits pooled into one document prediction, trained end to end at the document level)."""
    stride: int | None = None
    """chunk: tokens shared by consecutive windows. None: a quarter of the window's text budget."""
    max_chunks: int = 8
    """chunk: most windows per document; a longer document gets this many windows spread evenly over it.
    Memory per training step grows with batch_size x max_chunks windows."""
    pool: str = "max"
    """chunk: how window logits become the document's: 'max' or 'mean'. max by measurement: on long notes with
    the evidence in one place (benchmarks/accuracy/long_docs.py) max reached macro-F1 0.875 against mean's 0.701."""
    grad_accum: int = 1
    """Batches whose gradients are summed before each optimizer step: an effective batch of
    batch_size x grad_accum with the memory of one batch (big models on small cards)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total (overrides epochs when smaller)."""
    seed: int = 42
    precision: str = "auto"
    class_weights: str = "none"
    head_init: str = "linear-probe"
    """'random' (as transformers does) or 'linear-probe': fit the classifier head on frozen features first (LP-FT)."""
    attention_dropout: float | None = 0.0
    """Dropout on attention probabilities while fine-tuning. 0 (default) lets PyTorch use its fused
    attention kernel (about 1.7x faster training on CPU); None keeps the model's own value (0.1 for BERT)."""
    freeze_embeddings: bool = True
    """Keep the embedding block fixed while fine-tuning (half of MiniLM's weights; faster, less memory)."""
    average_epochs: bool = True
    """Also try the running average of the epoch-end weights (epochs 1..k) as a candidate; the candidate
    (single epoch or average) with the best validation macro-F1 is kept."""
    patience: int | None = None
    """Stop when validation macro-F1 has not improved for this many epochs. None: run all epochs."""
    calibrate: bool = True
    """Fit temperature scaling on the validation part after training (one scalar, saved with the run and
    applied by every inference path); changes no prediction, only how far the probabilities can be trusted."""
    drift_reference: bool = True
    """Keep the validation part's embeddings and calibrated probabilities (never its text) in RUN/reference/, what
    `medclf drift` compares new data with (run/reference.py); False: none is kept (embeddings derive from patient
    text), and `medclf reference` can add one later."""
    drop_empty: bool = False
    """Skip rows with an empty text or label instead of refusing the file."""
    overwrite: bool = False
    track: str = "none"
    """'mlflow': also log the finished run (options, per-epoch and test figures, report files) to MLflow
    (run/tracking.py); 'none': only the run directory."""
    test_size: float = 0.2
    val_size: float = 0.1
    calibration_size: float | None = None
    """Share of the rows left after the test part held out as the calibration part: rows that choose nothing (not the
    weights, the temperature, the thresholds) and train nothing, on which the conformal label sets are calibrated
    (core/conformal.py) and the deferral threshold (core/deferral.py). None: CALIBRATION_AUTO of them where
    target_precision is set, else none; 0: none."""
    target_precision: float | None = None
    """Defer to a person every text whose calibrated top probability is below the lowest threshold at which the
    automatic decisions reach this precision, guaranteed at level deferral_delta (core/deferral.py); chosen on the
    calibration part (carved by default when this is set). None: no deferral."""
    deferral_delta: float = 0.1
    """The chance the precision guarantee may fail (over the calibration part)."""
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    device: str = "auto"
    trust_remote_code: bool = False
    eval_batch_size: int | None = None
    """Texts per validation/test batch. None: 64 on a CPU; on a CUDA GPU as many as fit 65,536 padded tokens."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes saved with the run (never used by training)."""

    def __post_init__(self) -> None:
        if isinstance(self.text_columns, str):
            self.text_columns = [self.text_columns]
        if self.text_columns is not None:
            if not self.text_columns or not all(isinstance(c, str) and c for c in self.text_columns):
                raise MedclfError("text_columns must be a non-empty list of column names.")
            self.text_columns = list(self.text_columns)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        if self.eval_batch_size is not None:
            _positive_int("eval_batch_size", self.eval_batch_size)
        _positive_int("grad_accum", self.grad_accum)
        _positive_int("max_length", self.max_length)
        if self.max_length < 8:
            raise MedclfError(f"max_length must be at least 8 tokens, got {self.max_length}.")
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        if self.patience is not None:
            _positive_int("patience", self.patience)
        if self.attention_dropout is not None and (
            not isinstance(self.attention_dropout, (int, float)) or not 0.0 <= self.attention_dropout < 1.0
        ):
            raise MedclfError(f"attention_dropout must be in [0, 1) or None, got {self.attention_dropout!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise MedclfError(f"seed must be a non-negative integer, got {self.seed!r}.")
        _positive_float("lr", self.lr)
        if self.lr >= 1.0:
            raise MedclfError(f"lr must be below 1.0 (typical: 1e-5 to 2e-4), got {self.lr}.")
        for name in ("test_size", "val_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < value < 0.9:
                raise MedclfError(f"{name} must be a fraction between 0 and 0.9, got {value!r}.")
        if self.calibration_size is not None:
            size = self.calibration_size
            if not isinstance(size, (int, float)) or isinstance(size, bool) or not 0.0 <= size < 0.5:
                raise MedclfError(f"calibration_size must be a fraction between 0 and 0.5 (0: no calibration part), "
                                  f"got {size!r}.")
            if size and self.multi_label and self.target_precision is None:
                raise MedclfError("For a multi-label run the calibration part serves deferral only (conformal label "
                                  "sets are single-label); pass --target-precision with it, or leave "
                                  "--calibration-size unset.")
        for name in ("target_precision", "deferral_delta"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                      or not 0.0 < value < 1.0):
                raise MedclfError(f"{name} must be a share between 0 and 1 (such as 0.9), got {value!r}.")
        if self.target_precision is not None:
            if self.calibration_size == 0:
                raise MedclfError("--target-precision chooses its threshold on the calibration part; drop "
                                  "--calibration-size 0 (or pass a share such as 0.1).")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise MedclfError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.weight_decay < 0:
            raise MedclfError(f"weight_decay must be >= 0, got {self.weight_decay}.")
        _positive_float("max_grad_norm", self.max_grad_norm)
        _choice("precision", self.precision, PRECISIONS)
        _choice("class_weights", self.class_weights, CLASS_WEIGHTS)
        _choice("device", self.device, DEVICES)
        _choice("head_init", self.head_init, HEAD_INITS)
        _choice("long_text", self.long_text, LONG_TEXT)
        _choice("pool", self.pool, POOLS)
        _positive_int("max_chunks", self.max_chunks)
        if self.max_chunks > 256:
            raise MedclfError(f"max_chunks must be at most 256 (memory grows with it), got {self.max_chunks}.")
        if self.stride is not None:
            if not isinstance(self.stride, int) or isinstance(self.stride, bool) or self.stride < 0:
                raise MedclfError(f"stride must be a whole number of tokens >= 0, got {self.stride!r}.")
            if self.stride >= self.max_length - 2:
                raise MedclfError(f"stride ({self.stride}) must be smaller than max_length - 2 ({self.max_length - 2}) "
                                  "so that windows advance.")
        if self.long_text == "chunk":
            per_step = self.batch_size * self.max_chunks * self.max_length
            if per_step > MAX_WINDOW_TOKENS_PER_STEP:
                raise MedclfError(
                    f"chunk would put up to {per_step:,} tokens in one training step (batch_size {self.batch_size} x "
                    f"max_chunks {self.max_chunks} x max_length {self.max_length}), over the "
                    f"{MAX_WINDOW_TOKENS_PER_STEP:,} that fit in memory; lower --batch-size, --max-chunks or --max-length.")
        _choice("method", self.method, METHODS)
        _choice("few_shot", self.few_shot, FEW_SHOT)
        _choice("track", self.track, TRACKERS)
        if self.method == "zero-shot" and not self.label_descriptions:
            raise MedclfError("--method zero-shot needs --label-descriptions F (a table of label,description, or JSON "
                              '{"label": "description"}).')
        if self.label_descriptions and self.method == "finetune" and self.head_init != "linear-probe":
            raise MedclfError("--label-descriptions seeds the head through its linear probe; leave --head-init on "
                              "linear-probe (the default) or drop --label-descriptions.")
        if self.label_descriptions is not None and (not isinstance(self.label_descriptions, str)
                                                    or not self.label_descriptions.strip()):
            raise MedclfError("label_descriptions must be the path of a file of label descriptions.")
        self._check_labels()
        if not self.model or not isinstance(self.model, str):
            raise MedclfError("model must be 'default', a local model directory or a hub id.")

    def calibration_share(self) -> float:
        """The share of the rows left after the test part that forms the calibration part (0: none)."""
        if self.calibration_size is not None:
            return float(self.calibration_size)
        return CALIBRATION_AUTO if self.target_precision is not None else 0.0

    def _check_labels(self) -> None:
        if not isinstance(self.multi_label, bool):
            raise MedclfError(f"multi_label must be true or false, got {self.multi_label!r}.")
        if not isinstance(self.label_sep, str) or not self.label_sep.strip():
            raise MedclfError(f"label_sep must be a non-blank string such as '|', got {self.label_sep!r}.")
        if isinstance(self.label_column, (list, tuple)):
            columns = list(self.label_column)
            if not columns or not all(isinstance(c, str) and c for c in columns):
                raise MedclfError("label_column must be a column name or a list of column names.")
            if len(columns) == 1:
                self.label_column = columns[0]
            elif not self.multi_label:
                raise MedclfError(f"{len(columns)} label columns were given; several 0/1 label columns need "
                                  "--multi-label (or pass one --label-column).")
            elif len(set(columns)) != len(columns):
                raise MedclfError("A label column is named twice; pass each --label-column once.")
            else:
                self.label_column = columns
        elif self.label_column is not None and (not isinstance(self.label_column, str) or not self.label_column):
            raise MedclfError(f"label_column must be a column name, got {self.label_column!r}.")
        self.slice_columns = slice_column_list(self.slice_columns)
        _positive_int("slice_min_count", self.slice_min_count)
        if self.group_column is not None:
            if not isinstance(self.group_column, str) or not self.group_column:
                raise MedclfError(f"group_column must be a column name, got {self.group_column!r}.")
            if self.group_column in (self.label_columns or []) or self.group_column in (self.text_columns or []):
                raise MedclfError(f"group_column '{self.group_column}' is also a text or label column; pass the "
                                  "column that names the patient or trial.")

    @property
    def label_columns(self) -> list[str] | None:
        """The label column(s) as a list (None: to be guessed from the data)."""
        if self.label_column is None:
            return None
        return [self.label_column] if isinstance(self.label_column, str) else list(self.label_column)

    def inference_request(self, requested: str = "auto") -> str:
        """The inference precision to ask for this run's model (its validation and test passes, and later loads):
        `requested`, except that auto keeps a run trained with --precision fp32 in fp32, as its figures were measured."""
        return "fp32" if requested == "auto" and self.precision == "fp32" else requested

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedclfError(
                f"Unknown training option(s) {', '.join(unknown)}; known options are: {', '.join(sorted(known))}."
            )
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """How a run is loaded for inference, one value passed whole to every inference path: TextClassifier.load,
    evaluate, predict and explain (files), the server and Spark. Validated where it is built."""

    backend: str = "auto"
    """auto (int8 ONNX where exported and checked on the run's test part at 99% agreement, else fp32 ONNX, else
    PyTorch) | torch | onnx | onnx-int8."""
    device: str = "auto"
    batch_size: int | None = None
    """Texts per batch. None: INFER_BATCH_SIZE (16) on a CPU; on a CUDA GPU as many as fit 65,536 padded tokens."""
    precision: str = "auto"
    """auto (bf16 autocast on a CUDA GPU that supports it and on a CPU with AMX, fp32 elsewhere and for runs trained
    with --precision fp32, so predictions match the run's figures) | fp32 | bf16. PyTorch backend only."""
    threads: int | None = None
    """Inference threads (ONNX Runtime's intra-op threads; PyTorch's are the process's). None: one per core."""
    long_text: str | None = None
    """truncate | head-tail | chunk at inference; None: as the run was trained."""
    priors: str | None = None
    """A priors.json of `medclf drift`: the calibrated probabilities moved to the class shares it estimated on new
    data (Bayes' correction). None: the training shares, as trained."""
    void_guarantees: bool = False
    """Apply `priors` to a run with a deferral rule or label sets, whose guarantees were calibrated on the unchanged
    probabilities and no longer hold (refused without it)."""

    def __post_init__(self) -> None:
        _choice("backend", self.backend, BACKENDS)
        _choice("device", self.device, DEVICES)
        if self.batch_size is not None:
            _positive_int("batch_size", self.batch_size)
        _choice("precision", self.precision, INFER_PRECISIONS)
        if self.threads is not None:
            _positive_int("threads", self.threads)
        if self.long_text is not None:
            _choice("long_text", self.long_text, LONG_TEXT)

    def replace(self, **changes: Any) -> LoadOptions:
        """These options with the given fields changed (None leaves a field as it is); validated again."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(kw_only=True)
class DriftConfig:
    """`medclf drift`: new data against a run's reference (inference/drift.py); saved in drift.json."""

    data: str
    """The new data: a table of texts (labels, a time column and slice columns are used where present)."""
    output: str | None = None
    """Folder for drift.json, drift.md, the plots and priors.json (default runs/drift-TIMESTAMP)."""
    overwrite: bool = False
    alpha: float = 0.05
    """The false-alarm level of the decision (each of the two tests at alpha / 2)."""
    text_columns: list[str] | None = None
    label_column: str | list[str] | None = None
    """Default: the run's label column, used where the data has it."""
    time_column: str | None = None
    windows: int = 4
    """With time_column: windows of equal row count, in time order."""
    slice_columns: list[str] | None = None
    slice_min_count: int = 10
    permutations: int = 1000
    resamples: int = 200
    seed: int = 0
    drop_empty: bool = False
    track: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data:
            raise MedclfError("Pass the new data with --data FILE.")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not 0.0 < self.alpha < 1.0:
            raise MedclfError(f"--alpha must be a share between 0 and 1 (such as 0.05), got {self.alpha!r}.")
        for name in ("windows", "slice_min_count", "resamples"):
            _positive_int(name, getattr(self, name))
        _positive_int("permutations", self.permutations)
        needed = math.ceil(2 / self.alpha)  # the smallest p-value is 1 / (permutations + 1): it must fall below alpha/2
        if self.permutations < max(99, needed):
            raise MedclfError(f"--permutations must be at least {max(99, needed)} for --alpha {self.alpha} (the "
                              f"smallest p-value a permutation test gives is 1 / (permutations + 1)); pass "
                              f"--permutations {max(1000, math.ceil(10 / self.alpha))}.")
        self.slice_columns = slice_column_list(self.slice_columns)
        _choice("track", self.track, TRACKERS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PretrainConfig:
    """`medclf pretrain`: continued masked-language-model training on unlabelled text (training/pretrain.py)."""

    data: str
    """A .txt file (one text per line) or a table medclf reads; a label column, if any, is ignored."""
    text_columns: list[str] | None = None
    model: str = DEFAULT_MODEL
    output: str | None = None
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    mlm_probability: float = 0.15
    whole_word_masking: bool = False
    """Mask every piece of a word together (harder to guess from its own pieces)."""
    head_warmup_steps: int = 0
    """Steps that train the (new, random) MLM head alone, the encoder frozen, before both train."""
    max_length: int = 256
    val_size: float = 0.1
    """Share of the texts held out to measure the MLM loss before and after."""
    seed: int = 42
    precision: str = "auto"
    device: str = "auto"
    drop_empty: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False
    track: str = "none"
    """'mlflow': also log the finished job to MLflow (run/tracking.py)."""

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data:
            raise MedclfError("pretrain needs --data: a .txt file of one text per line, or a table.")
        for name in ("epochs", "batch_size", "grad_accum", "max_length"):
            _positive_int(name, getattr(self, name))
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        if not isinstance(self.head_warmup_steps, int) or self.head_warmup_steps < 0:
            raise MedclfError(f"head_warmup_steps must be a whole number >= 0, got {self.head_warmup_steps!r}.")
        _positive_float("lr", self.lr)
        if not 0.0 < self.mlm_probability < 1.0:
            raise MedclfError(f"mlm_probability must be between 0 and 1, got {self.mlm_probability!r}.")
        if not 0.0 < self.val_size < 0.9:
            raise MedclfError(f"val_size must be a fraction between 0 and 0.9, got {self.val_size!r}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise MedclfError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        _choice("precision", self.precision, PRECISIONS)
        _choice("device", self.device, DEVICES)
        _choice("track", self.track, TRACKERS)


TRAIN_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                                  if f.default is not dataclasses.MISSING}
"""Every option's default, as TrainConfig states it: the one place inference defaults come from too."""


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MedclfError(f"{name} must be a positive integer, got {value!r}.")


def _positive_float(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise MedclfError(f"{name} must be a positive number, got {value!r}.")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MedclfError(f"{name} must be one of {', '.join(choices)}, got {value!r}.")
