"""`medclf drift`: has new data moved away from what the run was trained and checked on? Without labels: the class
shares estimated from the run's calibrated probabilities (prevalence shift), a two-sample test between the run's
stored reference and the new texts in its encoder space (covariate shift) with the slice of the new data that moved
most, and the model's confidence; with labels, the measured figures against the run's test figures; with a time
column, all of it per time window. The statistics are in core/shift.py; the reference in run/reference.py.

Decision rule (what the exit status says): shift is detected when either test, prevalence or text, has a p-value
below alpha / 2 on the whole data (Bonferroni over the two tests: a stable source raises a false alarm at most
alpha of the time). Windows and slices describe where; they do not change the decision.

Nothing of the texts leaves this module: drift.json holds figures, label names, slice values seen at least
--slice-min-count times (rarer ones are folded into '(other)', as the subgroups of train are), the windows' first
and last days (never a row's time) and file names (never paths).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medclf.config import DriftConfig, LoadOptions
from medclf.core.columns import join_texts, resolve_columns
from medclf.core.deferral import decided_labels
from medclf.core.labels import label_values, read_slices
from medclf.core.metrics import bootstrap_intervals
from medclf.core.shift import mmd_test
from medclf.core.subgroups import OTHER, fold_rare
from medclf.core.tables import read_table
from medclf.core.tasks import headline_figures
from medclf.errors import MedclfError
from medclf.inference.classifier import TextClassifier
from medclf.run.artifacts import (
    METRICS_FILE,
    StagedRun,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    file_sha256,
    read_json,
)
from medclf.run.reference import PRIORS_FILE, Priors, Reference, read_reference, write_priors

log = logging.getLogger(__name__)
DRIFT_FILE = "drift.json"
DRIFT_TABLE = "drift.md"
SHARES_FILE = "shares.png"
CONFIDENCE_FILE = "confidence.png"
MIN_ROWS = 20
"""Rows a part (the data, a window) needs for its figures; a smaller window is named and not tested."""
SHOWN_SLICES = 5
EXIT_SHIFT = 3

NO_REFERENCE = ("This run has no drift reference (trained before `medclf drift` existed, or with --no-reference); add "
                "one with `medclf reference {run} --data TABLE` (a table drawn as the training data was, such as its "
                "validation rows; its texts are embedded, never kept).")


@dataclass(frozen=True)
class NewData:
    texts: list[str]
    labels: list[Any] | None
    slices: dict[str, list[str]] | None
    times: Any | None
    """A pandas Series of timestamps, one per text (with --time-column)."""
    source: str


@dataclass(frozen=True)
class DriftResult:
    output: Path
    report: dict[str, Any]

    @property
    def shifted(self) -> bool:
        return bool(self.report["shift_detected"])

    @property
    def exit_code(self) -> int:
        return EXIT_SHIFT if self.shifted else 0


def drift(run_dir: str | Path, config: DriftConfig, *, batch_size: int | None = None,
          classifier: TextClassifier | None = None) -> DriftResult:
    """Compare `config.data` with the run's reference and write drift.json, drift.md, the plots and priors.json
    into config.output (default runs/drift-TIMESTAMP). The run is loaded as its reference was computed: PyTorch in
    fp32, no priors (both samples must come from the same model arithmetic, or the tests would see it as a shift)."""
    started = time.perf_counter()
    output = Path(config.output or Path("runs") / time.strftime("drift-%Y%m%d-%H%M%S"))
    check_output_dir(output, overwrite=config.overwrite)
    if config.track == "mlflow":
        from medclf.run.tracking import require_mlflow

        require_mlflow()
    clf = classifier or TextClassifier.load(run_dir, reference_options(batch_size))
    reference = read_reference(run_dir)
    if reference is None:
        raise MedclfError(NO_REFERENCE.format(run=run_dir))
    if reference.info.labels != clf.labels:
        raise MedclfError(f"The run's drift reference holds the labels {', '.join(reference.info.labels)}, not the "
                          f"model's; add a new one with `medclf reference {run_dir} --data TABLE`.")
    new = read_new(config, clf)
    probs, vectors = clf.predict_proba_and_embed(new.texts)
    report: dict[str, Any] = {
        "run": Path(run_dir).name, "data_file": Path(config.data).name, "data_sha256": file_sha256(config.data),
        "n": len(new.texts), "labels": clf.labels, "task": clf.task.name, "alpha": config.alpha,
        "reference": {"part": reference.info.part, "n": reference.info.n,
                      "probability_precision": reference.info.probability_precision,
                      "embedding_precision": reference.info.embedding_precision},
        "probability_precision": clf.precision.name,
        "decision_rule": f"shift detected when the prevalence or the text test has p < alpha / 2 = "
                         f"{config.alpha / 2:g} on the whole data (Bonferroni over the two tests)",
    }
    report.update(_figures(clf, reference, probs, vectors, new, config, np.arange(len(new.texts))))
    report["shift_detected"] = bool(min(report["prevalence"]["p_value"], report["text"]["p_value"]) < config.alpha / 2)
    labelled = None if new.labels is None else _labelled(clf, run_dir, new.labels, probs, config.seed)
    if labelled is not None:
        report["labelled"] = labelled
    if new.times is not None:
        report["windows"] = _windows(clf, run_dir, reference, probs, vectors, new, config)
    report["summary"] = summary_line(report)
    report["options"] = {**config.to_dict(), "data": Path(config.data).name,  # file names: paths can name people
                         "output": output.name}
    report["seconds"] = time.perf_counter() - started
    _write(output, report, clf, reference, probs, config)
    final = output.resolve()
    if config.track == "mlflow":
        _track(final, report, config)
    return DriftResult(output=final, report=report)


# ---------------------------------------------------------------- reading the new data


def read_new(config: DriftConfig, clf: TextClassifier) -> NewData:
    """The texts of config.data (the run's text columns unless given), its labels where the run's label column is
    there (a row without one is left out of the labelled figures only), its slice columns and its time column; no
    text is ever named in an error."""
    spec = clf.spec
    frame = read_table(config.data)
    source = config.data
    label_column = config.label_column or (spec.label_column if spec else None)
    if isinstance(label_column, list) and len(label_column) == 1:
        label_column = label_column[0]
    wanted = list(label_column) if isinstance(label_column, list) else [label_column] if label_column else []
    present = bool(wanted) and all(c in frame.columns for c in wanted)
    if config.label_column is not None and not present:
        raise MedclfError(f"Label column(s) {', '.join(wanted)} are not in {source}; its columns are: "
                          f"{', '.join(map(str, frame.columns))}.")
    text_wanted = config.text_columns or (spec.text_columns if spec and all(c in frame.columns for c in
                                                                                spec.text_columns) else None)
    if text_wanted is None and present:  # never guess the text among the label columns
        others = frame.drop(columns=wanted)
        columns, _ = resolve_columns(others, None, None, source=source, need_label=False)
    else:
        columns, _ = resolve_columns(frame, text_wanted, None, source=source, need_label=False)
    joined = join_texts(frame, columns)
    empty = [i for i, t in enumerate(joined) if t is None]
    if empty and not config.drop_empty:
        raise MedclfError(f"{source} has {len(empty)} empty or missing text(s) (first at data row {empty[0] + 1}); "
                          "fix them or pass --drop-empty to skip them.")
    rows = [i for i, t in enumerate(joined) if t is not None]
    texts = [t for t in joined if t is not None]
    if len(texts) < MIN_ROWS:
        raise MedclfError(f"{source} has {len(texts)} usable text(s); drift needs at least {MIN_ROWS}.")
    labels = None
    if present:
        assert label_column is not None
        found, _ = label_values(frame, label_column, multi_label=clf.multi_label,
                                label_sep=spec.label_sep if spec else "|", source=source)
        labels = [found[i] for i in rows]
        known = [lab for lab in labels if lab is not None]
        unknown = sorted(set(clf.task.counts(known)) - set(clf.labels))
        if unknown:
            raise MedclfError(f"{source} has {len(unknown)} label(s) the model was never trained on; the model knows: "
                              f"{', '.join(clf.labels)}. Drop the label column to compare without labels.")
        if not known:
            labels = None
    slices = read_slices(frame, config.slice_columns, text_columns=columns, label_column=wanted, source=source)
    if slices is not None:
        slices = {c: [v[i] for i in rows] for c, v in slices.items()}
    times = None if config.time_column is None else _times(frame, config.time_column, rows, source)
    return NewData(texts=texts, labels=labels, slices=slices, times=times, source=source)


def _times(frame: Any, column: str, rows: list[int], source: str) -> Any:
    """The time column as UTC timestamps, one per kept row."""
    import pandas as pd

    if column not in frame.columns:
        raise MedclfError(f"Time column '{column}' is not in {source}; its columns are: {', '.join(map(str, frame.columns))}.")
    try:
        values = pd.to_datetime(frame[column].iloc[rows].astype(str), errors="coerce", format="mixed", utc=True)
    except (ValueError, TypeError, OverflowError):
        values = None
    bad = np.arange(len(rows)) if values is None else np.flatnonzero(values.isna().to_numpy())
    if len(bad):
        raise MedclfError(f"{len(bad)} value(s) of the time column '{column}' in {source} are not dates (first at data "
                          f"row {rows[bad[0]] + 1}); write them as 2026-01-31 or 2026-01-31T08:00.")
    assert values is not None
    return values.reset_index(drop=True)


# ---------------------------------------------------------------- the figures


def _figures(clf: TextClassifier, reference: Reference, probs: np.ndarray, vectors: np.ndarray, new: NewData,
             config: DriftConfig, idx: np.ndarray, *, describe: bool = True) -> dict[str, Any]:
    """Prevalence, text and confidence figures of the new rows idx against the reference."""
    task, labels = clf.task, clf.labels
    train = np.array([reference.info.train_shares[lab] for lab in labels])
    shift = task.prior_shift(probs[idx], train, reference=reference.probabilities, permutations=config.permutations,
                             resamples=config.resamples, seed=config.seed)
    decided = task.decide(probs[idx], clf.threshold_array)
    predicted = decided.mean(axis=0) if clf.multi_label else np.bincount(decided, minlength=len(labels)) / len(idx)
    prevalence = {
        "method": "EM prior adjustment (Saerens, Latinne & Decaestecker 2002) on the calibrated probabilities; 95% "
                  f"percentile bootstrap over the texts ({config.resamples} resamples)",
        "test": shift.test, "p_value": shift.p_value, "shifted": bool(shift.p_value < config.alpha / 2),
        "rows": [{"label": lab, "train": float(train[k]), "estimated": float(shift.shares[k]), "low": float(shift.low[k]),
                  "high": float(shift.high[k]), "predicted": float(predicted[k])} for k, lab in enumerate(labels)],
    }
    found = mmd_test(reference.embeddings, vectors[idx], permutations=config.permutations, seed=config.seed)
    text: dict[str, Any] = {
        "method": "maximum mean discrepancy (Gretton et al. 2012) between the reference and the new texts' fp32 "
                  "embeddings, Gaussian kernel of median width, p-value by permutation",
        "statistic": found.statistic, "p_value": found.p_value, "permutations": found.permutations,
        "n_reference": found.n_reference, "n_new": found.n_new, "shifted": bool(found.p_value < config.alpha / 2),
    }
    if describe:
        text["most_shifted"] = _most_shifted(clf, reference, probs, new, idx[found.rows], found.witness, config)
    return {"prevalence": prevalence, "text": text, "confidence": _confidence(clf, reference.probabilities, probs[idx])}


def _confidence(clf: TextClassifier, reference: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Shares of texts below 0.5 and 0.9 (the least sure decision's calibrated probability: the top one, or per
    label that of present or absent), deferred by the run's rule, and the expected accuracy of the decisions."""
    thresholds = clf.threshold_array

    def side(p: np.ndarray) -> dict[str, float]:
        conf = clf.task.decision_confidence(p, thresholds)
        least = conf.min(axis=1)
        out = {"below_0.5": float((least < 0.5).mean()), "below_0.9": float((least < 0.9).mean()),
               "expected_accuracy": float(conf.mean())}
        rule = clf.deferral
        if rule is not None:
            out["deferred"] = float((~decided_labels(clf.task, p, rule, clf.labels, thresholds).all(axis=1)).mean())
        return out

    what = ("the top probability" if not clf.multi_label else
            "each label's decision (present or absent) at its threshold; a text counts by its least sure label")
    return {"reference": side(reference), "new": side(probs), "of": what,
            "histogram": {"edges": np.linspace(0, 1, 21).tolist(),
                          "reference": _hist(clf, reference), "new": _hist(clf, probs)}}


def _hist(clf: TextClassifier, probs: np.ndarray) -> list[float]:
    least = clf.confidence(probs)
    counts = np.histogram(least, bins=np.linspace(0, 1, 21))[0]
    return (counts / max(1, len(least))).tolist()


def _most_shifted(clf: TextClassifier, reference: Reference, probs: np.ndarray, new: NewData, rows: np.ndarray,
                  witness: np.ndarray, config: DriftConfig) -> list[dict[str, Any]]:
    """The slices of the new data whose texts look least like the reference (highest mean witness): by length
    (the reference's length quartiles, in words), by predicted label and by each --slice-columns column (values
    seen fewer than --slice-min-count times folded into '(other)'), most shifted first."""
    words = np.array([len(new.texts[i].split()) for i in rows])
    q1, q2, q3 = reference.info.length_quartiles
    bands = np.digitize(words, [q1, q2, q3], right=True)
    names = [f"up to {q1:.0f} words", f"{q1:.0f}-{q2:.0f} words", f"{q2:.0f}-{q3:.0f} words", f"over {q3:.0f} words"]
    groups: dict[str, list[str]] = {"length": [names[b] for b in bands]}
    decided = clf.task.decide(probs[rows], clf.threshold_array)
    if clf.multi_label:
        groups["predicted"] = [", ".join(clf.task.names(d, clf.labels)) or "(no label)" for d in decided]
    else:
        groups["predicted"] = [clf.labels[int(d)] for d in decided]
    for column, values in (new.slices or {}).items():
        groups[column] = [values[i] for i in rows]
    overall = float(witness.mean())
    found: list[dict[str, Any]] = []
    for by, raw in groups.items():
        folded = np.array(fold_rare(raw, config.slice_min_count))
        for value in sorted(set(folded.tolist())):
            members = np.asarray(folded == value)
            if value == OTHER or members.sum() < config.slice_min_count:
                continue
            found.append({"by": by, "value": str(value), "n": int(members.sum()), "share": float(members.mean()),
                          "witness": float(witness[members].mean()), "gap": float(witness[members].mean() - overall)})
    found.sort(key=lambda s: -s["gap"])
    return found[:SHOWN_SLICES]


def _labelled(clf: TextClassifier, run_dir: str | Path, labels: list[Any], probs: np.ndarray,
              seed: int) -> dict[str, Any] | None:
    """With labels: the headline figures on the labelled rows of the new data with their bootstrap intervals,
    beside the run's test ones; None where no row is labelled."""
    rows = [i for i, lab in enumerate(labels) if lab is not None]
    if not rows:
        return None
    y = clf.task.targets([labels[i] for i in rows], clf.labels)
    probs = probs[rows]
    thresholds = clf.threshold_array
    figures = headline_figures(clf.task.metrics(y, probs, clf.labels, thresholds))
    intervals = bootstrap_intervals(y, clf.task.decide(probs, thresholds), multi_label=clf.multi_label, seed=seed)
    path = Path(run_dir) / METRICS_FILE
    saved = read_json(path) if path.is_file() else {}
    test = headline_figures(saved["test"]) if isinstance(saved, dict) and "test" in saved else {}
    return {"n": len(rows), "figures": {k: float(v) for k, v in figures.items()},
            "intervals": {k: v for k, v in intervals.items() if isinstance(v, dict)},
            "run_test": {k: float(v) for k, v in test.items()}}


def _windows(clf: TextClassifier, run_dir: str | Path, reference: Reference, probs: np.ndarray, vectors: np.ndarray,
             new: NewData, config: DriftConfig) -> list[dict[str, Any]]:
    """The figures per time window (shares, both tests, confidence, and with labels the measured ones; the slices
    are the whole data's): the rows in time order cut into config.windows windows of equal row count, each named by
    its first and last date (days, not times)."""
    assert new.times is not None
    order = np.argsort(new.times.to_numpy(), kind="stable")
    out = []
    for k, idx in enumerate(np.array_split(order, config.windows), 1):
        if not len(idx):
            continue
        times = new.times.iloc[idx]
        row: dict[str, Any] = {"window": k, "first": str(times.min().date()), "last": str(times.max().date()),
                               "n": int(len(idx))}
        if len(idx) < MIN_ROWS:
            row["tested"] = False
            row["reason"] = f"too small to test: {len(idx)} rows, fewer than {MIN_ROWS}"
        else:
            row["tested"] = True
            idx = np.sort(idx)
            row.update(_figures(clf, reference, probs, vectors, new, config, idx, describe=False))
            labelled = None if new.labels is None else _labelled(clf, run_dir, [new.labels[i] for i in idx],
                                                                 probs[idx], config.seed)
            if labelled is not None:
                row["labelled"] = labelled
        out.append(row)
    return out


def summary_line(report: dict[str, Any]) -> str:
    """The one line a scheduler reads: the decision, both p-values and the largest estimated change of a share."""
    rows = report["prevalence"]["rows"]
    moved = max(rows, key=lambda r: abs(r["estimated"] - r["train"]))
    verdict = "shift detected" if report["shift_detected"] else "no shift detected"
    return (f"medclf drift: {verdict} at alpha {report['alpha']} on {report['n']} texts (prevalence p = "
            f"{report['prevalence']['p_value']:.3g}, text p = {report['text']['p_value']:.3g}; largest share change: "
            f"{moved['label']} {moved['train']:.3f} -> {moved['estimated']:.3f}).")


# ---------------------------------------------------------------- writing


def _write(output: Path, report: dict[str, Any], clf: TextClassifier, reference: Reference, probs: np.ndarray,
           config: DriftConfig) -> None:
    from medclf.reporting.drift import confidence_png, drift_markdown, shares_png

    with StagedRun(output, overwrite=config.overwrite) as run:
        atomic_write_json(run.path / DRIFT_FILE, report)
        atomic_write_text(run.path / DRIFT_TABLE, drift_markdown(report, shares=SHARES_FILE, confidence=CONFIDENCE_FILE))
        atomic_write_bytes(run.path / SHARES_FILE, shares_png(report))
        atomic_write_bytes(run.path / CONFIDENCE_FILE, confidence_png(report))
        rows = report["prevalence"]["rows"]
        shares = np.clip([r["estimated"] for r in rows], 1e-6, 1 - 1e-6)  # EM may take a class to ~0: never exactly
        if not clf.multi_label:
            shares = shares / shares.sum()
        write_priors(run.path / PRIORS_FILE, Priors(
            labels=clf.labels, multi_label=clf.multi_label, train=[r["train"] for r in rows],
            shares=[float(v) for v in shares], source=f"{report['data_file']} ({report['n']} texts)",
            method=report["prevalence"]["method"], model_sha256=reference.info.model_sha256))


def _track(final: Path, report: dict[str, Any], config: DriftConfig) -> None:
    from medclf.run.tracking import log_job

    figures: dict[str, object] = {"prevalence_p_value": report["prevalence"]["p_value"],
                                  "text_p_value": report["text"]["p_value"], "text_mmd": report["text"]["statistic"],
                                  "shift_detected": float(report["shift_detected"]), "n": report["n"]}
    for row in report["prevalence"]["rows"]:
        figures[f"share.{row['label']}"] = row["estimated"]
    for side in ("reference", "new"):
        for key, value in report["confidence"][side].items():
            figures[f"confidence.{side}.{key}"] = value
    log_job(kind="drift", name=final.name, directory=final, params=config.to_dict(), final=figures,
            artifacts=[DRIFT_FILE, DRIFT_TABLE, SHARES_FILE, CONFIDENCE_FILE, PRIORS_FILE], seconds=report["seconds"])


# ---------------------------------------------------------------- adding a reference to a run


def reference_options(batch_size: int | None = None) -> LoadOptions:
    """How drift and `medclf reference` load a run: PyTorch in fp32 without priors, as training computed the
    reference (so both samples come from the same model arithmetic on every machine)."""
    return LoadOptions(backend="torch", precision="fp32", batch_size=batch_size)


def add_reference(run_dir: str | Path, *, data: str, text_columns: list[str] | None = None,
                  drop_empty: bool = False, batch_size: int | None = None) -> Path:
    """RUN/reference/ from a table of texts (labels, if any, are ignored): for a run trained before references
    existed or with --no-reference. The texts are embedded and predicted (fp32); none is kept."""
    from medclf.inference.files import read_inputs
    from medclf.run.reference import (
        EMBEDDING_PRECISION,
        ReferenceInfo,
        length_quartiles,
        model_fingerprint,
        prior_shares,
        write_reference,
    )

    clf = TextClassifier.load(run_dir, reference_options(batch_size))
    spec = clf.spec
    _, texts, _ = read_inputs(data, None, text_columns=text_columns, default_columns=spec.text_columns if spec else None,
                              drop_empty=drop_empty)
    if len(texts) < MIN_ROWS:
        raise MedclfError(f"{data} has {len(texts)} text(s); a reference needs at least {MIN_ROWS}.")
    metrics_path = Path(run_dir) / METRICS_FILE
    saved = read_json(metrics_path) if metrics_path.is_file() else {}
    part = saved.get("data", {}) if isinstance(saved, dict) else {}
    counts, total = part.get("class_counts", {}).get("train"), part.get("n_train")
    if not counts or not total or clf.spec is None:
        raise MedclfError(f"{metrics_path} holds no training class counts; the run is damaged, train it again.")
    info = ReferenceInfo(part=f"{Path(data).name} ({len(texts)} rows)", n=len(texts), labels=clf.labels,
                         multi_label=clf.multi_label,
                         train_shares=prior_shares(counts, total, clf.labels, multi_label=clf.multi_label,
                                                   class_weights=clf.spec.config.class_weights),
                         length_quartiles=length_quartiles(texts), embedding_precision=EMBEDDING_PRECISION,
                         probability_precision=EMBEDDING_PRECISION, model_sha256=model_fingerprint(run_dir))
    probs, vectors = clf.predict_proba_and_embed(texts)
    return write_reference(run_dir, Reference(info=info, embeddings=vectors, probabilities=probs))
