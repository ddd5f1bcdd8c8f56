"""`train`: a run in named stages: split, tokenize, fit (fine-tuning or frozen embeddings), test (calibration,
metrics, intervals, the TF-IDF baseline), then the run directory written in a staging folder and renamed into place."""

from __future__ import annotations

import dataclasses
import importlib
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from medclf._version import __version__
from medclf.config import TrainConfig
from medclf.core.baseline import start_tfidf
from medclf.core.calibration import calibration_summary, fold_temperature, scale_thresholds, temperature_for
from medclf.core.conformal import ConformalSets, set_figures
from medclf.core.deferral import DeferralRequest, choose_rule, deferral_figures, routing, rule_sentence
from medclf.core.descriptions import Descriptions, check_label_descriptions, read_label_descriptions
from medclf.core.figures import Figures, RunMetrics, Truncation
from medclf.core.labels import LabeledData
from medclf.core.methods import FitMethod, method_of
from medclf.core.metrics import bootstrap_intervals, headline
from medclf.core.subgroups import subgroup_figures
from medclf.core.tables import demo_data_path
from medclf.core.tasks import Task, headline_figures, task_for
from medclf.errors import MedclfError
from medclf.model.batching import Encoded, encode
from medclf.model.embeddings import encoder_vectors
from medclf.model.modeling import (
    batching_for,
    check_max_length,
    choose_device,
    inference_precision,
    load_tokenizer,
    resolve_model,
)
from medclf.reporting.card import write_card
from medclf.reporting.report import write_report
from medclf.run.artifacts import (
    CALIBRATION_PREDICTIONS_FILE,
    LOG_FILE,
    METRICS_FILE,
    MODEL_DIR,
    PREDICTIONS_FILE,
    VALIDATION_PREDICTIONS_FILE,
    StagedRun,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    save_pretrained_atomic,
)
from medclf.run.reference import (
    EMBEDDING_PRECISION,
    Reference,
    ReferenceInfo,
    length_quartiles,
    model_fingerprint,
    prior_shares,
    write_reference,
)
from medclf.run.runspec import RunSpec
from medclf.run.tracking import track_train
from medclf.training.distributed import Dist
from medclf.training.fitting import (
    DescriptionRows,
    FewLabels,
    Fitted,
    Prepared,
    RunLog,
    document_logits,
    fewest_rows,
    set_seed,
)
from medclf.training.jobs import open_job
from medclf.training.splits import Splits, prepare_splits

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def fit_function(method: FitMethod) -> Callable[..., Fitted]:
    """The function that fits `method` (its descriptor names it as 'module:function' in medclf.training)."""
    module, name = method.fit.split(":")
    if not module.startswith("medclf.training."):
        raise MedclfError(f"The fitting method {method.name!r} must name a function in medclf.training, not {module}.")
    fit: Callable[..., Fitted] = getattr(importlib.import_module(module), name)
    return fit


@dataclass
class TrainResult:
    """What `train` returns: where the run is, and its figures."""

    run_dir: Path
    metrics: RunMetrics
    config: TrainConfig
    probs: np.ndarray
    """The test part's calibrated probabilities (rows in the test part's order; cross-validation's out-of-fold ones)."""

    @property
    def test_metrics(self) -> Figures:
        return self.metrics["test"]


@dataclass
class Tested:
    """The kept model on the test part: figures, probabilities, and the calibration that goes with the run."""

    metrics: Figures
    probs: np.ndarray
    temperature: float
    folded: bool
    """The temperature was folded into the saved head (which then gives calibrated logits itself)."""
    thresholds: np.ndarray | None
    note: str
    seconds: float
    calibration_probs: np.ndarray | None = None
    """The calibration part's calibrated probabilities (None: no calibration part)."""
    validation_probs: np.ndarray | None = None
    """The validation part's, where the run has a calibration part (they place the deferral scan's start)."""
    reference: tuple[np.ndarray, np.ndarray] | None = None
    """The drift reference: the validation part's fp32 embeddings and calibrated probabilities (None: --no-reference)."""


def train(config: TrainConfig, *, progress: bool = True, splits: Splits | None = None, plots: bool = True) -> TrainResult:
    """Train a classifier as `config` says (fine-tuning or frozen embeddings), evaluate it on the test
    part, and write the run directory. `splits`: parts made by the caller (`medclf cv` folds) instead of
    reading and splitting `config.data`. plots: write the report's PNG figures (cross-validation folds skip them)."""
    job = open_job(config)
    started, dist, output = job.started, job.dist, job.output

    runlog = RunLog(enabled=dist.is_main)
    splits = splits or prepare_splits(config)
    descriptions = None
    if config.label_descriptions:
        descriptions = read_label_descriptions(config.label_descriptions)
        check_label_descriptions(descriptions, splits.labels, source=config.label_descriptions)
    task = task_for(config.multi_label)
    source = resolve_model(config.model)
    check_max_length(source, config.max_length, trust_remote_code=config.trust_remote_code)
    runlog.info(
        "Data: %d train / %d validation / %d test%s rows, %d %s (%s).",
        len(splits.train), len(splits.val), len(splits.test),
        "" if splits.calibration is None else f" / {len(splits.calibration)} calibration", len(splits.labels),
        task.classes, splits.how,
    )
    set_seed(config.seed)
    tokenizer = load_tokenizer(source, trust_remote_code=config.trust_remote_code)
    prep = _prepare(config, splits, task, tokenizer=tokenizer, dist=dist, runlog=runlog, descriptions=descriptions)
    # the TF-IDF baseline: meanwhile in another process where a GPU trains (the CPU is idle then), after it on a CPU
    baseline = start_tfidf(splits.train.texts, prep.y_train, splits.test.texts, len(splits.labels),
                           multi_label=task.multi_label, background=prep.device.type == "cuda")
    fitted = fit_function(method_of(config.method))(config, source=source, labels=splits.labels, prep=prep,
                                                    runlog=runlog, progress=progress and dist.is_main)
    tested = _test(fitted, prep, splits.labels, config, slices=splits.test.slices)
    metrics = _metrics(config, splits, prep, fitted, tested, baseline())
    spec = _run_spec(config, splits, task, source, prep, fitted, tested)
    if not dist.is_main:  # the main process writes the run; the others wait for it and report the same figures
        dist.barrier()
        return TrainResult(run_dir=output, metrics=metrics, config=config, probs=tested.probs)
    final = _write_run(output, config, splits, task, tokenizer, fitted, tested, metrics, spec, runlog,
                       plots=plots, started=started)
    if config.track == "mlflow":
        track_train(final)
    dist.barrier()
    return TrainResult(run_dir=final, metrics=metrics, config=config, probs=tested.probs)


def _prepare(config: TrainConfig, splits: Splits, task: Task, *, tokenizer: PreTrainedTokenizerBase, dist: Dist, runlog: RunLog,
             descriptions: Descriptions | None = None) -> Prepared:
    """Tokenize the three parts (windows in chunk mode) and the label descriptions, and turn labels into targets."""
    device = dist.device or choose_device(config.device)
    if dist.active:
        runlog.info("Distributed: %d processes; each trains on its shard of every global batch of %d x %d texts "
                    "(effective batch %d with gradient accumulation %d); --lr is used as given, not scaled.",
                    dist.world, config.batch_size, dist.world, config.batch_size * dist.world * config.grad_accum,
                    config.grad_accum)
    parts = [("train", splits.train), ("val", splits.val), ("test", splits.test)]
    if splits.calibration is not None:
        parts.append(("calibration", splits.calibration))
    enc = {
        name: encode(tokenizer, part.texts, max_length=config.max_length, long_text=config.long_text,
                     stride=config.stride, max_chunks=config.max_chunks)
        for name, part in parts
    }
    for name, e in enc.items():
        if e.doc_of is not None:
            runlog.info("%s: %d texts in %d windows of at most %d tokens (%d texts longer than %d windows cover: "
                        "%.1f%% of tokens not seen).", name, e.n_docs, len(e.input_ids), config.max_length, e.n_truncated,
                        config.max_chunks, 100.0 * e.tokens_lost / max(1, e.tokens_total))
        elif e.n_truncated:
            runlog.info(
                "%s: %d of %d texts cut at max_length %d (%.1f%% of tokens lost).",
                name, e.n_truncated, len(e.input_ids), config.max_length, 100.0 * e.tokens_lost / max(1, e.tokens_total),
            )
    labels = splits.labels
    y_train = task.targets(splits.train.labels, labels)
    y_val = task.targets(splits.val.labels, labels)
    few_labels = FewLabels.decide(config.few_shot, method=config.method, task=task, y_val=y_val, labels=labels)
    if few_labels.applies:
        runlog.info(few_labels.note())
    elif config.few_shot == "auto" and method_of(config.method).selects:
        runlog.info("Few-labels rule not applied: %s (the rarest class has %d training row(s)).", few_labels.reason,
                    fewest_rows(task, y_train, len(labels)))
    evaluation = inference_precision(config.inference_request(), device)  # as TextClassifier runs here
    if evaluation.name != "fp32":
        runlog.info("Validation and test passes in %s (%s), as predictions on this machine.", evaluation.name,
                    evaluation.reason)
    rows = None
    if descriptions is not None:
        texts = [(text, i) for i, lab in enumerate(labels) for text in descriptions[lab]]
        rows = DescriptionRows(encode(tokenizer, [t for t, _ in texts], max_length=config.max_length).input_ids,
                               [i for _, i in texts])
        runlog.info("Label descriptions: %d for %d classes (%s).", len(texts), len(labels), config.label_descriptions)
    return Prepared(
        enc=enc,
        y_train=y_train,
        y_val=y_val,
        y_test=task.targets(splits.test.labels, labels),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        device=device,
        task=task,
        dist=dist,
        descriptions=rows,
        few_labels=few_labels,
        evaluation=evaluation,
        y_calibration=None if splits.calibration is None else task.targets(splits.calibration.labels, labels),
    )


def _test(fitted: Fitted, prep: Prepared, labels: list[str], config: TrainConfig, *,
          slices: dict[str, list[str]] | None = None) -> Tested:
    """Calibrate on validation (temperature scaling: changes no decision), then the test figures of the kept model
    (with slices: by subgroup too)."""
    model, task, y_test = fitted.model, prep.task, prep.y_test

    def logits(part: str) -> np.ndarray:
        return document_logits(model, prep.enc[part], config, prep)

    temperature, note = 1.0, "off (--no-calibrate)"
    val_logits = logits("val") if config.calibrate or prep.y_calibration is not None else None
    if config.calibrate and val_logits is not None:
        temperature, note = temperature_for(val_logits, prep.y_val, task)
    start = time.perf_counter()
    test_logits = logits("test")
    probs = task.probabilities(test_logits / temperature)
    seconds = time.perf_counter() - start
    # multi-label: the thresholds tuned on validation for the kept weights decide (moved with the temperature);
    # 0.5 on the model's own sigmoid probabilities, as tools without tuning use it, is reported beside them.
    thresholds = None
    if task.multi_label and prep.few_labels.tune_thresholds:
        thresholds = scale_thresholds(np.array([fitted.validation["thresholds"][lab] for lab in labels]), temperature)
    test = task.metrics(y_test, probs, labels, thresholds)
    test["calibration"] = calibration_summary(test_logits, y_test, task, temperature)
    test["intervals"] = bootstrap_intervals(y_test, task.decide(probs, thresholds), multi_label=task.multi_label,
                                            seed=config.seed)
    calibration_probs = val_probs = None
    if prep.y_calibration is not None and val_logits is not None:  # sets and deferral, on rows that chose nothing
        calibration_probs = task.probabilities(logits("calibration") / temperature)
        val_probs = task.probabilities(val_logits / temperature)
        if not task.multi_label:  # label sets are single-label; a multi-label run keeps the part for deferral
            test["sets"] = set_figures(ConformalSets(calibration_probs, prep.y_calibration), probs, y_test, labels,
                                       precision=prep.evaluation.name)
        if config.target_precision is not None:
            rule = choose_rule(task, calibration_probs, prep.y_calibration,
                               DeferralRequest(config.target_precision, config.deferral_delta), labels=labels,
                               order_probs=val_probs, order_y=prep.y_val, thresholds=thresholds, backend="torch",
                               precision=prep.evaluation.name)
            test["deferral"] = deferral_figures(task, probs, y_test, rule, labels, thresholds)
    if slices:
        routed = routing(task, probs, y_test, test["deferral"]["rule"] if "deferral" in test else None, labels,
                         thresholds)
        test["subgroups"] = subgroup_figures(task, y_test, probs, task.decide(probs, thresholds), slices,
                                             min_count=config.slice_min_count, seed=config.seed, routed=routed)
    # The saved model gives calibrated logits itself where its last layer is linear; otherwise the run keeps T
    # and TextClassifier divides by it.
    folded = temperature != 1.0 and fold_temperature(model, temperature)
    test["calibration"]["folded_into_model"] = folded
    test["calibration"]["note"] = note
    if task.multi_label:
        test["at_threshold_0.5"] = headline_figures(task.metrics(y_test, task.probabilities(test_logits), labels))
    reference = None
    if config.drift_reference:  # what `medclf drift` compares new texts with: vectors and probabilities, no text
        e = prep.enc["val"]
        vectors = encoder_vectors(model, e.input_ids, doc_of=e.doc_of, n_docs=e.n_docs, pad_id=prep.pad_id,
                                  batching=batching_for(prep.device, config.eval_batch_size), device=prep.device)
        fp32 = inference_precision("fp32", prep.device)  # as drift computes the new texts', on any machine
        ref_logits = val_logits if val_logits is not None and prep.evaluation.name == fp32.name else \
            document_logits(model, e, config, dataclasses.replace(prep, evaluation=fp32))
        reference = vectors, task.probabilities(ref_logits / temperature)
    return Tested(metrics=test, probs=probs, temperature=temperature, folded=folded, thresholds=thresholds, note=note,
                  seconds=seconds, calibration_probs=calibration_probs, validation_probs=val_probs, reference=reference)


def _metrics(config: TrainConfig, splits: Splits, prep: Prepared, fitted: Fitted, tested: Tested,
             baseline: np.ndarray | None) -> RunMetrics:
    """metrics.json: the test figures, the TF-IDF baseline on the same split, the history and where the time went."""
    task, labels, y_test = prep.task, splits.labels, prep.y_test
    return {
        "few_shot": prep.few_labels.applies,
        "few_shot_reason": prep.few_labels.reason,
        "test": tested.metrics,
        "baseline_tfidf": None if baseline is None else headline_figures(task.metrics(y_test, baseline, labels)),
        "task": task.name,
        "method": config.method,
        "validation": fitted.validation,
        "best_epoch": fitted.best_epoch,
        "selected": fitted.selected,
        "history": fitted.history,
        "data": {
            "how": splits.how,
            "n_train": len(splits.train),
            "n_val": len(splits.val),
            "n_test": len(splits.test),
            "n_calibration": 0 if splits.calibration is None else len(splits.calibration),
            "class_counts": {
                name: task.counts(part.labels) for name, part in
                (("train", splits.train), ("validation", splits.val), ("test", splits.test),
                 ("calibration", splits.calibration)) if part is not None
            },
            "n_dropped_empty": splits.train.n_dropped,
            "truncation": {name: _truncation(e, config.max_length) for name, e in prep.enc.items()},
        },
        "timing": {
            **fitted.timing,
            "test_inference_seconds": tested.seconds,
            "test_inference_samples_per_second": len(y_test) / tested.seconds if tested.seconds else None,
            "total_seconds": None,
        },
    }


def _run_spec(config: TrainConfig, splits: Splits, task: Task, source: str, prep: Prepared, fitted: Fitted,
              tested: Tested) -> RunSpec:
    """The run's description: its options, and what training found (labels, calibration, provenance)."""
    labels, dist = splits.labels, prep.dist
    return RunSpec(
        config=config,
        medclf_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        labels=labels,
        task=task.name,
        temperature=1.0 if tested.folded else tested.temperature,
        calibration_temperature=tested.temperature,
        thresholds=None if tested.thresholds is None else {lab: float(t) for lab, t in zip(labels, tested.thresholds)},
        deferral=tested.metrics["deferral"]["rule"] if "deferral" in tested.metrics else None,
        text_columns=splits.train.text_columns,
        label_column=splits.train.label_column,
        model_source=source,
        device=prep.device.type,
        method=config.method,
        precision=fitted.precision,
        precision_reason=fitted.precision_reason,
        evaluation_precision=prep.evaluation.name,
        data_file=str(config.data) if config.data else str(demo_data_path()),
        data_sha256={
            "data": file_sha256(config.data or demo_data_path()),
            "test_data": file_sha256(config.test_data),
            "val_data": file_sha256(config.val_data),
        },
        versions=_versions(),
        split=splits.how,
        processes={"count": dist.world, "per_process_batch": config.batch_size, "grad_accum": config.grad_accum,
                   "effective_batch": config.batch_size * dist.world * config.grad_accum,
                   "lr_scaling": "none: --lr is used as given for the effective batch"},
    )


def _write_run(output: Path, config: TrainConfig, splits: Splits, task: Task, tokenizer: PreTrainedTokenizerBase, fitted: Fitted,
               tested: Tested, metrics: RunMetrics, spec: RunSpec, runlog: RunLog, *, plots: bool,
               started: float) -> Path:
    """Build the run in a staging folder beside `output` and rename it into place (nothing half-written is left)."""
    test = tested.metrics
    with StagedRun(output, overwrite=config.overwrite) as run:
        stage = run.path
        save_pretrained_atomic(fitted.model.cpu(), tokenizer, stage / MODEL_DIR)
        spec.write(stage)
        if tested.reference is not None:
            _write_reference(stage, splits, task, spec, tested.reference)
        runlog.info(
            "Test: %s on %d rows; training %.1f s (%.1f samples/s).",
            headline(test).replace("   ", ", "), test["n"], metrics["timing"]["train_seconds"],
            metrics["timing"]["train_samples_per_second"] or 0.0,
        )
        cal = test["calibration"]
        runlog.info("Calibration: temperature %.3f (%s%s); test ECE %.4f -> %.4f, Brier %.4f -> %.4f.", tested.temperature,
                    tested.note, ", folded into the saved head" if tested.folded else "", cal["ece_before"],
                    cal["ece_after"], cal["brier_before"], cal["brier_after"])
        if "deferral" in test:
            runlog.info("Deferral: %s", rule_sentence(test["deferral"]["rule"]))
        atomic_write_text(stage / LOG_FILE, runlog.text())
        atomic_write_text(stage / PREDICTIONS_FILE, _predictions_csv(splits.test, splits.labels, task, tested.probs,
                                                                     tested.thresholds, config.label_sep))
        for name, part, part_probs in ((CALIBRATION_PREDICTIONS_FILE, splits.calibration, tested.calibration_probs),
                                       (VALIDATION_PREDICTIONS_FILE, splits.val, tested.validation_probs)):
            if part is not None and part_probs is not None:  # full precision: label sets are calibrated on them
                atomic_write_text(stage / name, _predictions_csv(part, splits.labels, task, part_probs, None,
                                                                 config.label_sep, float_format="%.10g"))
        metrics["timing"]["total_seconds"] = time.perf_counter() - started
        write_report(stage, metrics=metrics, spec=spec, plots=plots)
        atomic_write_json(stage / METRICS_FILE, metrics)
        write_card(stage, name=output.name)
    return run.final


def _write_reference(stage: Path, splits: Splits, task: Task, spec: RunSpec,
                     arrays: tuple[np.ndarray, np.ndarray]) -> None:
    """RUN/reference/ (run/reference.py): the validation part's vectors and probabilities, the training shares, the
    quartiles of the validation texts' lengths; no text."""
    info = ReferenceInfo(part="validation part", n=len(splits.val), labels=splits.labels, multi_label=task.multi_label,
                         train_shares=prior_shares(task.counts(splits.train.labels), len(splits.train), splits.labels,
                                                   multi_label=task.multi_label, class_weights=spec.config.class_weights),
                         length_quartiles=length_quartiles(splits.val.texts), embedding_precision=EMBEDDING_PRECISION,
                         probability_precision=EMBEDDING_PRECISION, model_sha256=model_fingerprint(stage))
    write_reference(stage, Reference(info=info, embeddings=arrays[0], probabilities=arrays[1]))


def _truncation(e: Encoded, max_length: int) -> Truncation:
    out: Truncation = {
        "max_length": max_length,
        "texts_cut": e.n_truncated,
        "share_texts_cut": e.n_truncated / max(1, e.n_docs),
        "share_tokens_lost": e.tokens_lost / max(1, e.tokens_total),
        "mean_tokens": e.tokens_total / max(1, e.n_docs),
        "mean_tokens_kept": sum(e.lengths) / max(1, e.n_docs),
    }
    if e.text_tokens:  # the length distribution of whole texts, in tokens
        p10, p50, p90 = (float(np.percentile(e.text_tokens, q)) for q in (10, 50, 90))
        out.update({"tokens_p10": p10, "tokens_p50": p50, "tokens_p90": p90, "tokens_max": int(max(e.text_tokens))})
    if e.doc_of is not None:  # chunk: texts_cut = texts longer than max_chunks windows cover
        out.update({"windows": len(e.input_ids), "mean_windows": len(e.input_ids) / max(1, e.n_docs)})
    return out


def _predictions_csv(
    test: LabeledData, labels: list[str], task: Task, probs: np.ndarray, thresholds: np.ndarray | None, sep: str,
    *, float_format: str = "%.6f",
) -> str:
    """Test predictions by source row index; the texts are left out (they may hold patient data).
    Multi-label: the true and predicted label sets joined with the run's label separator."""
    import pandas as pd

    decided = task.decide(probs, thresholds)
    if task.multi_label:
        frame = pd.DataFrame({"row": test.rows, "labels": [sep.join(present) for present in test.labels],
                              "predicted": [sep.join(task.names(d, labels)) for d in decided]})
    else:
        frame = pd.DataFrame({"row": test.rows, "label": test.labels})
        frame["predicted"] = [labels[i] for i in decided]
        frame["score"] = probs[np.arange(len(decided)), decided]
    for i, lab in enumerate(labels):
        frame[f"prob_{lab}"] = probs[:, i]
    return frame.to_csv(index=False, float_format=float_format)


def _versions() -> dict[str, str]:
    import transformers

    return {
        "medclf": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
