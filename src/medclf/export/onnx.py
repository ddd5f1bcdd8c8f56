"""ONNX export (fp32 and int8) with a self-check (the runtime that serves it: medclf.inference.onnx_runtime).

`export_onnx(run_dir)` writes `RUN/onnx/` (or `--output`):

- model.onnx: the classifier as one graph, inputs `input_ids` and `attention_mask` (int64, dynamic batch
  and sequence axes), output `logits` (float32), fused for CPU by ONNX Runtime's transformer optimizer;
- model.int8.onnx (with `quantize="int8"`): weights in int8, the first quantization recipe that keeps the
  top label of at least 99% of the check texts (the run's own test part by default; backend auto takes it only
  where those were the texts, `onnx_runtime.int8_trusted`);
- export.json: the figures of the self-check, the recipe, the versions; config.json and the tokenizer
  files, so the folder stands on its own for ONNX Runtime users.

Exporter: torch.onnx's TorchScript path, with the eager attention implementation. Measured on MiniLM
(2 CPU cores): ONNX Runtime's optimizer fuses that graph into 6 `Attention` + 12 `SkipLayerNormalization`
nodes; on the graph of the dynamo exporter it finds no attention to fuse, and int8 ran slower
(59 vs 63 texts/s). optimum is not used: it adds a dependency for what these ~100 lines do.

Nothing is written under the final name unless the fp32 graph matches PyTorch within 1e-4 on every
probability of the check texts; the folder is built beside its final path and renamed into place.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medclf.config import LoadOptions
from medclf.core.figures import Label
from medclf.errors import MedclfError
from medclf.inference.onnx_runtime import (
    EXPORT_INFO,
    FP32_FILE,
    INT8_FILE,
    MIN_INT8_AGREEMENT,
    ONNX_DIR,
    OnnxRunner,
    onnxruntime_available,
)
from medclf.model.batching import Batching
from medclf.model.modeling import run_batches
from medclf.run.artifacts import (
    CALIBRATION_PREDICTIONS_FILE,
    CONFIG_FILE,
    MODEL_DIR,
    PREDICTIONS_FILE,
    VALIDATION_PREDICTIONS_FILE,
    StagedRun,
    atomic_write_json,
    file_sha256,
    is_run_dir,
)

if TYPE_CHECKING:
    from medclf.inference.classifier import TextClassifier

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
"""Largest allowed |p_onnx - p_torch| over every class probability of every check text (fp32)."""
OPSET = 17
CHECK_BATCH = 8
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")
INT8_RECIPES = ("dynamic", "blockwise-128", "blockwise-32")
"""int8 recipes, fastest first (see _recipes)."""
FUSABLE_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert", "distilbert": "bert"}


# ---------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What `export_onnx` wrote and how well the exported graphs match PyTorch."""

    output_dir: str
    n_check_texts: int
    check_source: str
    fp32_max_abs_diff: float
    fp32_file: str
    int8_file: str | None = None
    int8_recipe: str | None = None
    int8_agreement: float | None = None
    int8_max_abs_diff: float | None = None
    int8_tried: list[dict[str, Any]] = field(default_factory=list)
    checked_on_test_part: bool = False
    """The check texts were the run's own test part (then backend auto may choose the int8 model)."""
    int8_skipped: str | None = None
    """Why no int8 model was written (every recipe failed to run, or none kept enough predictions)."""
    optimized: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_onnx_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / ONNX_DIR


def export_onnx(
    run_dir: str | Path,
    *,
    quantize: str = "int8",
    output: str | Path | None = None,
    data: str | None = None,
    text_columns: list[str] | None = None,
    max_check_texts: int = 256,
    seed: int = 0,
    int8_recipe: str = "auto",
) -> ExportResult:
    """Export a trained run to ONNX (and int8 with quantize='int8'), check it against PyTorch, write it.

    The check texts come from `data` (any table `medclf predict --input` reads; up to
    `max_check_texts`, sampled with `seed`), else the run's own test part (`_check_texts`), else the packaged demo
    notes; the reference is the fp32 PyTorch model. Raises MedclfError when
    the fp32 graph differs from PyTorch by more than 1e-4; an int8 model that keeps the top label of
    fewer than 99% of the texts under every recipe is not written (the result says so).
    int8_recipe: "auto" tries the recipes fastest first and keeps the first that passes; a recipe's
    name (INT8_RECIPES) tries only that one.
    """
    if quantize not in ("none", "int8"):
        raise MedclfError(f"--quantize must be none or int8, not {quantize!r}.")
    if int8_recipe not in ("auto", *INT8_RECIPES):
        raise MedclfError(f"--int8-recipe must be auto or one of {', '.join(INT8_RECIPES)}, not {int8_recipe!r}.")
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise MedclfError(f"{run_dir} is not a medclf run directory (no {CONFIG_FILE} and {MODEL_DIR}/); pass the --output of `medclf train`.")
    if not onnxruntime_available():
        raise MedclfError("ONNX export needs onnxruntime and onnx; `pip install onnxruntime onnx`.")
    from medclf.inference.classifier import TextClassifier

    started = time.perf_counter()
    final = Path(output) if output is not None else default_onnx_dir(run_dir)
    if final.exists() and not (final / EXPORT_INFO).is_file() and any(final.iterdir()):
        raise MedclfError(f"{final} holds files that are not a medclf ONNX export; choose another --output.")
    # the reference is the fp32 PyTorch model, whatever this CPU would choose for inference (ONNX runs fp32)
    clf = TextClassifier.load(run_dir, LoadOptions(backend="torch", device="cpu", precision="fp32"))
    texts, source, on_test = _check_texts(clf, data, text_columns, max_check_texts, seed)
    encoded = clf.encode(texts).input_ids  # for long_text='chunk', windows: the check compares window by window
    reference = clf.task.probabilities(clf.sequence_logits(encoded, batch_size=CHECK_BATCH))
    with StagedRun(final, overwrite=True) as run:  # an earlier export is replaced once the new one is complete
        result = _export_checked(clf, run.path, encoded, reference, final=final, source=source, n_texts=len(texts))
        result.checked_on_test_part = on_test
        if quantize == "int8":
            _quantize_checked(run.path / FP32_FILE, run.path / INT8_FILE, encoded, clf.pad_id, reference, result, clf,
                              int8_recipe)
        _copy_model_files(run_dir / MODEL_DIR, run.path)
        deferral = _deferral_checks(clf, run.path, [FP32_FILE, *([result.int8_file] if result.int8_file else [])])
        result.seconds = round(time.perf_counter() - started, 1)
        atomic_write_json(run.path / EXPORT_INFO, {**_export_info(clf, result),
                                                   **({"deferral": deferral} if deferral else {})})
    return result


def _export_checked(clf: TextClassifier, staging: Path, encoded: list[list[int]], reference: np.ndarray, *, final: Path,
                    source: str, n_texts: int) -> ExportResult:
    """The fp32 ONNX graph (exported, optimised) in `staging`, refused when it differs from PyTorch's probabilities
    on the check texts by more than PARITY_TOLERANCE."""
    raw = staging / "model.raw.onnx"
    model = clf.torch_model()
    _torch_export(model, raw, clf.max_length)
    fp32 = staging / FP32_FILE
    optimized = _optimize(raw, fp32, getattr(model, "config"))
    raw.unlink()
    fp32_probs = clf.task.probabilities(_onnx_logits(OnnxRunner(fp32), encoded, clf))
    diff = float(np.abs(fp32_probs - reference).max())
    log.info("fp32 ONNX vs PyTorch on %d check texts: max |p difference| %.2e (limit %.0e).", n_texts, diff,
             PARITY_TOLERANCE)
    if not diff <= PARITY_TOLERANCE:
        raise MedclfError(
            f"The exported ONNX graph differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE:.0e}) on the check "
            "texts; nothing was written. Use the torch backend for this model."
        )
    return ExportResult(output_dir=str(final.resolve()), n_check_texts=n_texts, check_source=source,
                        fp32_max_abs_diff=diff, fp32_file=FP32_FILE, optimized=optimized)


def _check_texts(clf: TextClassifier, data: str | None, text_columns: list[str] | None, limit: int,
                 seed: int) -> tuple[list[str], str, bool]:
    """The texts the export is checked on, where they came from, and whether they are the run's own test part:
    `data` (up to `limit`, sampled with `seed`); else the run's test part, read again from the training table where it
    is still there unchanged (its SHA-256 as at training); else the packaged demo notes."""
    from medclf.inference.files import read_inputs

    if data is None:
        test = _test_part_texts(clf)
        if test is not None:
            return test, f"the run's test part ({len(test)} texts)", True
        from medclf.core.tables import demo_data_path

        log.info("The run's test data is not where it was trained from, or it changed since; checking the export "
                 "on the packaged demo notes (backend auto will not choose its int8 model).")
        data, source = str(demo_data_path()), "packaged demo notes"
    else:
        source = str(data)
    default_columns = clf.spec.text_columns if clf.spec else None
    _, texts, _ = read_inputs(data, None, text_columns=text_columns, default_columns=default_columns, drop_empty=True)
    if not texts:
        raise MedclfError(f"{data} holds no texts to check the export on; pass --data with a table of texts.")
    if len(texts) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
        texts = [texts[i] for i in keep]
    return texts, source, False


def _test_part_texts(clf: TextClassifier) -> list[str] | None:
    """The texts of the run's test part, in its order, or None where its table is gone or changed."""
    spec = clf.spec
    found = _part_rows(clf, PREDICTIONS_FILE, "test_data" if spec is not None and spec.config.test_data else "data")
    return None if found is None else [t for t in found[0] if t is not None] or None


def _part_rows(clf: TextClassifier, predictions: str, table: str) -> tuple[list[str | None], list[Label]] | None:
    """The texts and given labels of one of the run's parts, in its order, or None where its table is gone or changed
    since training (its SHA-256). The run keeps no text: its predictions files keep each row's number in the table it
    came from. table: the option that named that table ('data', 'test_data' or 'val_data'). Labels: a name each, or
    (multi-label) a list of names each."""
    import pandas as pd

    from medclf.core.columns import join_texts
    from medclf.core.tables import read_table

    spec, run_dir = clf.spec, clf.run_dir
    if spec is None or run_dir is None or not (run_dir / predictions).is_file():
        return None
    source = spec.data_file if table == "data" else getattr(spec.config, table)
    expected = spec.data_sha256.get(table)
    if not source or not expected or not Path(source).is_file() or file_sha256(source) != expected:
        return None
    frame = pd.read_csv(run_dir / predictions, dtype={"label": str, "labels": str}, keep_default_na=False)
    texts = join_texts(read_table(source).iloc[frame["row"].tolist()], spec.text_columns)
    if "labels" in frame.columns:  # multi-label: the label sets joined with the run's separator
        sep = spec.config.label_sep
        return list(texts), [value.split(sep) if value else [] for value in frame["labels"]]
    return list(texts), frame["label"].tolist() if "label" in frame.columns else []


def _deferral_checks(clf: TextClassifier, staging: Path, files: list[str]) -> dict[str, Any] | None:
    """The run's deferral rule chosen again, as training chose it (core.deferral), on each exported model's own
    calibrated probabilities of the run's calibration part (the scan's start from its validation part): an ONNX
    model's probabilities differ a little from PyTorch's, so its threshold is its own. None for a run without a rule;
    `checked` False (and no model's rule) where those parts' texts cannot be read back unchanged."""
    from medclf.core.deferral import DeferralRequest, choose_rule, rule_sentence

    rule = clf.spec.deferral if clf.spec is not None else None
    if rule is None:
        return None
    parts = {"calibration": _part_rows(clf, CALIBRATION_PREDICTIONS_FILE, "data"),
             "validation": _part_rows(clf, VALIDATION_PREDICTIONS_FILE,
                                      "val_data" if clf.spec is not None and clf.spec.config.val_data else "data")}
    if any(part is None or any(t is None for t in part[0]) for part in parts.values()):
        log.warning("The run's calibration or validation texts are not where it was trained from, or they changed: "
                    "its deferral threshold was not re-checked, and the ONNX models will refuse predict_or_defer.")
        return {"checked": False, "torch": rule, "models": {}}
    thresholds = clf.threshold_array
    models: dict[str, Any] = {}
    for name in files:
        runner = OnnxRunner(staging / name)
        probs, targets = {}, {}
        for part, found in parts.items():
            assert found is not None
            texts = [t for t in found[0] if t is not None]
            encoded = clf.encode(texts)
            window = run_batches(runner, encoded.input_ids, batching=Batching(CHECK_BATCH), pad_id=clf.pad_id,
                                 width=len(clf.labels))
            probs[part] = clf.task.probabilities(clf.document_logits(window, encoded.doc_of, encoded.n_docs))
            targets[part] = clf.task.targets(found[1], clf.labels)
        models[name] = choose_rule(clf.task, probs["calibration"], targets["calibration"],
                                   DeferralRequest(rule["target_precision"], rule["delta"]), labels=clf.labels,
                                   order_probs=probs["validation"], order_y=targets["validation"],
                                   thresholds=thresholds, backend=runner.backend,
                                   precision="int8" if runner.backend == "onnx-int8" else "fp32")
        log.info("Deferral with %s: %s", name, rule_sentence(models[name]))
    return {"checked": True, "torch": rule, "models": models}


def _onnx_logits(runner: OnnxRunner, input_ids: list[list[int]], clf: TextClassifier) -> np.ndarray:
    """An ONNX model's logits on the check texts, in the batches of the PyTorch reference (mixed lengths, so padding
    is part of the check)."""
    return run_batches(runner, input_ids, batching=Batching(CHECK_BATCH), pad_id=clf.pad_id, width=len(clf.labels))


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


@contextlib.contextmanager
def _eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """The eager attention graph (matmul + softmax) is the one ONNX Runtime's optimizer fuses."""
    # the outermost transformers model (the encoder of an EmbeddingClassifier) sets its submodules
    target: Any = next(m for m in model.modules() if hasattr(m, "set_attn_implementation"))
    before = getattr(target.config, "_attn_implementation", None)
    target.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before:
            target.set_attn_implementation(before)


def _torch_export(model: torch.nn.Module, path: Path, max_length: int) -> None:
    model = model.float().eval()
    width = max(4, min(16, max_length))
    ids = torch.full((2, width), 100, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, width // 2 :] = 0  # a padded row, so the mask's path is traced
    with _eager_attention(model), warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LogitsOnly(model), (ids, mask), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "logits": {0: "batch"}},
        )


def _optimize(raw: Path, dest: Path, config: Any) -> bool:
    """Fuse attention, layer norms and GELU for ONNX Runtime's CPU kernels; unfused when that fails."""
    kind = FUSABLE_TYPES.get(getattr(config, "model_type", ""))
    if kind is not None:
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            with _quiet_onnxruntime():
                optimized = optimize_model(
                    str(raw), model_type=kind, num_heads=int(config.num_attention_heads), hidden_size=int(config.hidden_size)
                )
                optimized.save_model_to_file(str(dest))
            fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
            log.info("ONNX Runtime fused: %s.", ", ".join(f"{v} {k}" for k, v in sorted(fused.items())) or "nothing")
            return True
        except Exception as exc:  # noqa: BLE001 - the optimizer's pattern matching can fail on unusual graphs
            log.warning("ONNX Runtime's optimizer failed (%s); the unfused graph is exported.", type(exc).__name__)
    shutil.copyfile(raw, dest)
    return False


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """onnxruntime's quantizer and optimizer warn on the root logger; keep that off the user's terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _recipes() -> list[tuple[str, Callable[[Path, Path], None]]]:
    """int8 recipes, fastest first. Measured on the medical-abstracts test texts (MiniLM, 2 cores):
    dynamic 2.2x PyTorch fp32 but 97.9% top-label agreement; blockwise-128 1.36x, 99.3%; blockwise-32 1.22x, 99.7%."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def dynamic(src: Path, dst: Path) -> None:
        # int8 weights per output channel, activations quantized per tensor at run time; only
        # weight matmuls (MatMulConstBOnly) and fused attention, not the embedding table or the head.
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Attention"],
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )

    def blockwise(block: int) -> Callable[[Path, Path], None]:
        # int8 weights in blocks of `block` input channels (MatMulNBits, bits=8); activations are
        # quantized per block too (accuracy_level 4), which follows outliers far better than one scale per tensor.
        def run(src: Path, dst: Path) -> None:
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # needs onnx-ir

            quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=block, is_symmetric=True, accuracy_level=4)
            quantizer.process()
            quantizer.model.save_model_to_file(str(dst), False)

        return run

    recipes = {"dynamic": dynamic, "blockwise-128": blockwise(128), "blockwise-32": blockwise(32)}
    return [(name, recipes[name]) for name in INT8_RECIPES]


def _quantize_checked(
    fp32: Path, dest: Path, encoded: list[list[int]], pad_id: int, reference: np.ndarray, result: ExportResult,
    clf: TextClassifier, only: str = "auto",
) -> None:
    """Agreement: the same decision as PyTorch (top label; multi-label: the same label set at the run's thresholds)."""
    expected = clf.decide(reference)
    for name, recipe in _recipes():
        if only not in ("auto", name):
            continue
        candidate = dest.with_name(f".{name}.onnx")
        try:
            with _quiet_onnxruntime():
                recipe(fp32, candidate)
            probs = clf.task.probabilities(_onnx_logits(OnnxRunner(candidate), encoded, clf))
        except Exception as exc:  # noqa: BLE001 - a recipe the graph does not take (Longformer: ScatterND after int8)
            reason = _first_line(exc)
            result.int8_tried.append({"recipe": name, "error": reason})
            log.warning("int8 (%s) failed on this model (%s: %s); trying the next recipe.", name, type(exc).__name__, reason)
            candidate.unlink(missing_ok=True)
            continue
        agreement = float(np.mean([a == b for a, b in zip(clf.decide(probs), expected)])) if expected else 1.0
        max_diff = float(np.abs(probs - reference).max())
        result.int8_tried.append({"recipe": name, "agreement": agreement, "max_abs_diff": max_diff})
        log.info("int8 (%s): same prediction as PyTorch on %.1f%% of %d check texts (need %.0f%%); max |p difference| %.3f.",
                 name, 100 * agreement, len(encoded), 100 * MIN_INT8_AGREEMENT, max_diff)
        if agreement >= MIN_INT8_AGREEMENT:
            candidate.rename(dest)
            result.int8_file, result.int8_recipe = dest.name, name
            result.int8_agreement, result.int8_max_abs_diff = agreement, max_diff
            return
        candidate.unlink()
    if all("error" in tried for tried in result.int8_tried):
        result.int8_skipped = (f"no int8 recipe runs on this model ({', '.join(t['recipe'] for t in result.int8_tried)} "
                               "failed in ONNX Runtime); the fp32 ONNX model is the export")
    else:
        result.int8_skipped = (f"no int8 recipe kept the prediction of {100 * MIN_INT8_AGREEMENT:.0f}% of the check texts; "
                               "the fp32 ONNX model is the export")
    log.warning("%s; model.int8.onnx was not written.", result.int8_skipped[0].upper() + result.int8_skipped[1:])


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an error, short: ONNX Runtime's messages name nodes and shapes, never input text."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit]


def _copy_model_files(model_dir: Path, dest: Path) -> None:
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, dest / name)


def _export_info(clf: TextClassifier, result: ExportResult) -> dict[str, Any]:
    import onnxruntime

    from medclf._version import __version__

    return {
        "format": "onnx",
        "opset": OPSET,
        "exporter": f"torch.onnx (TorchScript, eager attention), torch {torch.__version__}",
        "onnxruntime": onnxruntime.__version__,
        "medclf": __version__,
        "inputs": {"input_ids": "int64 [batch, sequence]", "attention_mask": "int64 [batch, sequence]"},
        "outputs": {"logits": "float32 [batch, n_labels]; probabilities = sigmoid(logits), a label is predicted where "
                               "its probability >= its threshold" if clf.multi_label else
                               "float32 [batch, n_labels]; probabilities = softmax(logits)"},
        "labels": clf.labels,
        "multi_label": clf.multi_label,
        "thresholds": clf.thresholds,
        "temperature": clf.temperature,
        "calibration": "divide the logits by temperature before softmax/sigmoid (medclf's TextClassifier does)",
        "max_length": clf.max_length,
        "long_text": clf.long_text,
        "check": {"parity_tolerance": PARITY_TOLERANCE, "min_int8_agreement": MIN_INT8_AGREEMENT, **result.to_dict()},
    }

