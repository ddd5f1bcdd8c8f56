"""k-fold cross-validation: the whole training procedure once per fold, and how much its figures vary.

Folds run in parallel processes on a CPU with several cores (`workers`, each with cores / workers
threads): small batches keep two threads half idle, so two folds at a time finish sooner than one
fold on two threads. Each fold is a normal run directory (OUTPUT/fold-K/: model, metrics, report) trained with the same
options on the other folds (less a validation slice, by groups where given) and tested on its fold.
cv.json and cv.md give every fold's figures, their mean and a 95% interval for the mean (Student's t
over the folds: mean +- t(0.975, k-1) x sd / sqrt(k)).

With a calibration part (`--calibration-size`, or `--target-precision`), each fold carves its own from its training
rows, as `train` does, and its run chooses its label sets and deferral rule there; cv then reports them out of fold:
the sets' coverage pooled over every row and in the worst fold, and each fold's deferral rule on its own test fold
(coverage, realised precision, whether it reached the target) with every row's routing pooled. That is the
guarantee checked over k held-out parts; cross-validation still has no model to deploy, so train the run you
deploy with the same options.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medclf.config import TrainConfig
from medclf.core.deferral import clopper_pearson, routing
from medclf.core.figures import (
    FIGURE_NAMES,
    Band,
    CVDeferral,
    CVReport,
    CVSetRow,
    DeferralFigures,
    FigureKey,
    FoldDeferral,
    FoldRow,
    Headline,
    Label,
    LabelSetFigures,
)
from medclf.core.labels import LabeledData
from medclf.core.subgroups import subgroup_figures, subgroup_lines
from medclf.core.tasks import headline_figures, task_for, task_of
from medclf.errors import MedclfError
from medclf.run.artifacts import CV_FILE, StagedRun, atomic_write_json, atomic_write_text
from medclf.run.tracking import log_job
from medclf.training.jobs import open_job
from medclf.training.splits import Splits, kfold_indices

log = logging.getLogger(__name__)
CV_TABLE = "cv.md"


@dataclass
class CVResult:
    output: Path
    folds: list[FoldRow]
    summary: dict[FigureKey, Band]
    labels: list[str]
    """The classes (multi-label: the labels), in the order of `probs`' columns."""
    rows: list[int]
    """0-based row of each kept data row in the source table, in the data's order."""
    given: list[Label]
    """Each row's label as the data gives it (multi-label: a tuple of labels)."""
    probs: np.ndarray
    """Out-of-fold probabilities (rows x labels): each row's from the fold run that did not train on it (calibrated
    on that fold's validation slice, as every run's are)."""
    multi_label: bool


@dataclass
class _Fold:
    """One fold's training job: its options (output in the staging folder), its parts, and which data rows it tests."""

    config: TrainConfig
    splits: Splits
    held: list[int]
    """Positions in the data of the fold's test rows, in the test part's order."""


@dataclass
class FoldResult:
    """What a fold's run hands back: its headline test figures, training time and test probabilities."""

    figures: Headline
    train_seconds: float
    probs: np.ndarray
    """The fold's test rows' calibrated probabilities, in the test part's order."""
    decided: np.ndarray
    """The fold's decisions on them (multi-label: at the fold's own thresholds)."""
    deferral: DeferralFigures | None = None
    """What the fold's deferral rule did on its test rows (with --target-precision)."""
    routed: np.ndarray | None = None
    """Per test row: 1 where the fold's rule decided it automatically, and the share of its decisions that are right."""
    sets: LabelSetFigures | None = None


def mean_interval(values: list[float], level: float = 0.95) -> Band:
    """Mean, standard deviation and the t interval for the mean of the fold figures."""
    from scipy import stats

    k = len(values)
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1)) if k > 1 else 0.0
    half = float(stats.t.ppf(0.5 + level / 2, k - 1)) * sd / math.sqrt(k) if k > 1 else 0.0
    # every figure here is a share: an interval reaching past 0 or 1 (few folds, wide spread) is cut there
    return {"mean": mean, "sd": sd, "low": max(0.0, mean - half), "high": min(1.0, mean + half)}


def default_workers(config: TrainConfig, folds: int) -> int:
    """One fold per core on a CPU; one at a time on a GPU (it is shared)."""
    import os

    from medclf.model.modeling import choose_device

    if choose_device(config.device).type != "cpu":
        return 1
    return max(1, min(folds, os.cpu_count() or 1))


def _run_fold(fold: _Fold, progress: bool, threads: int | None = None) -> FoldResult:
    from medclf.training.pipeline import train

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    result = train(fold.config, progress=progress, splits=fold.splits, plots=False)
    test = result.test_metrics
    task, thresholds, labels = task_of(test), test.get("thresholds"), test["labels"]
    limits = None if thresholds is None else np.array([thresholds[lab] for lab in labels])
    decided = task.decide(result.probs, limits)
    deferral, routed = test.get("deferral"), None
    if deferral is not None:
        found = routing(task, result.probs, task.targets(fold.splits.test.labels, labels), deferral["rule"], labels,
                        limits)
        assert found is not None
        routed = np.stack([found[0].astype(float), found[1]], axis=1)
    return FoldResult(figures={key: float(value) for key, value in headline_figures(test).items()},
                      train_seconds=result.metrics["timing"]["train_seconds"], probs=result.probs, decided=decided,
                      deferral=deferral, routed=routed, sets=test.get("sets"))


def _fold_jobs(config: TrainConfig, data: LabeledData, labels: list[str], pairs: list[tuple[list[int], list[int]]],
               stage: Path) -> list[_Fold]:
    """Each fold's training job: its config (writing into the staging folder), its parts and its test rows."""
    from medclf.training.splits import Splits, check_training_labels, split_off

    folds = len(pairs)
    share = config.calibration_share()
    jobs: list[_Fold] = []
    for k, (rest, held) in enumerate(pairs, 1):
        pool, test = data.subset(rest), data.subset(held)
        train_part, val = split_off(pool, fraction=config.val_size, seed=config.seed, part="validation",
                                    option="a larger --val-size")
        calibration, carved = None, ""
        if share:  # as train carves it: from the rows left for training, by groups where given
            train_part, calibration = split_off(train_part, fraction=share, seed=config.seed, part="calibration",
                                                option="a smaller --calibration-size")
            carved = f"; stratified {share:.0%} calibration part"
        check_training_labels(train_part, labels)
        grouped = f", grouped by {config.group_column}" if config.group_column else ""
        splits = Splits(train=train_part, val=val, test=test, labels=labels, calibration=calibration,
                        how=f"fold {k} of {folds}{grouped} (seed {config.seed}) as test; stratified "
                            f"{config.val_size:.0%} validation slice of the other folds{carved}")
        # the folds are not tracked one by one: the cross-validation is logged as one run, the folds its steps
        # nor do they keep a drift reference: cross-validation has no run to deploy
        jobs.append(_Fold(config=dataclasses.replace(config, output=str(stage / f"fold-{k}"), overwrite=False,
                                                     track="none", drift_reference=False), splits=splits, held=held))
    return jobs


def _run_folds(jobs: list[_Fold], *, workers: int, progress: bool) -> list[FoldResult]:
    """Train and test every fold: one after another, or `workers` at once in spawned processes sharing the cores."""
    import os

    if workers == 1:
        return [_run_fold(fold, progress) for fold in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # cores / workers threads per fold; the folds of a last, partial round share the cores among fewer
    cores = os.cpu_count() or 1
    last_round = len(jobs) % workers
    threads = [max(1, cores // (last_round if i >= len(jobs) - last_round else workers)) for i in range(len(jobs))]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_fold, fold, False, n): k for k, (fold, n) in enumerate(zip(jobs, threads))}
        done: dict[int, FoldResult] = {}
        for future in as_completed(futures):
            k = futures[future]
            done[k] = future.result()
            log.info("Fold %d of %d done: macro-F1 %.4f (%d of %d folds finished).", k + 1, len(jobs),
                     done[k].figures["macro_f1"], len(done), len(jobs))
    return [done[k] for k in range(len(jobs))]


def cross_validate(config: TrainConfig, *, folds: int = 5, progress: bool = False, workers: int | None = None) -> CVResult:
    """Train and test once per fold (stratified, or grouped by config.group_column); write OUTPUT/fold-K/
    runs, cv.json and cv.md. config.test_data and config.test_size do not apply: each fold is a test part.
    workers: folds trained at once, in separate processes (default: one per CPU core, 1 on a GPU)."""
    from medclf.training.splits import read_training_data

    if config.test_data is not None:
        raise MedclfError("--test-data does not apply to cross-validation: every row is tested once, in its fold.")
    job = open_job(config, prefix="cv-", distributed=False)
    started, output = job.started, job.output
    data, labels = read_training_data(config)
    pairs = kfold_indices(data.labels, folds=folds, seed=config.seed, groups=data.groups, source=data.source)
    if config.val_data is not None:
        raise MedclfError("--val-data does not apply to cross-validation: each fold takes its own validation slice.")
    workers = default_workers(config, folds) if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise MedclfError(f"workers must be a positive whole number, got {workers!r}.")
    with StagedRun(output, overwrite=config.overwrite) as run:
        jobs = _fold_jobs(config, data, labels, pairs, run.path)
        results = _run_folds(jobs, workers=workers, progress=progress)
        rows = [_fold_row(k, fold, result) for k, (fold, result) in enumerate(zip(jobs, results), 1)]
        keys = task_for(config.multi_label).headline_keys
        summary = {key: mean_interval([result.figures[key] for result in results]) for key in keys}
        seconds = time.perf_counter() - started
        report: CVReport = {"folds": folds, "workers": workers, "grouped_by": config.group_column, "seed": config.seed,
                            "rows": rows, "summary": summary,
                            "interval": "95% Student t interval for the mean over the folds", "seconds": seconds,
                            "config": config.to_dict()}
        probs = out_of_fold(jobs, [result.probs for result in results], n_rows=len(data), n_labels=len(labels))
        routed = None
        if config.target_precision is not None:
            pooled = out_of_fold(jobs, [_routed(result) for result in results], n_rows=len(data), n_labels=2)
            routed = pooled[:, 0].astype(bool), pooled[:, 1]
            report["deferral"] = cv_deferral(results, *routed)
        if any(result.sets is not None for result in results):
            report["sets"] = cv_sets([result.sets for result in results if result.sets is not None])
        if data.slices:  # by subgroup: every row's out-of-fold prediction, as the folds decided them (and routed)
            task = task_for(config.multi_label)
            decided = out_of_fold(jobs, [result.decided.astype(float) for result in results], n_rows=len(data),
                                  n_labels=len(labels) if config.multi_label else 1)
            decided = decided.astype(bool) if config.multi_label else decided[:, 0].astype(int)
            report["subgroups"] = subgroup_figures(task, task.targets(data.labels, labels), probs, decided, data.slices,
                                                   min_count=config.slice_min_count, seed=config.seed, routed=routed)
        atomic_write_json(run.path / CV_FILE, report)
        atomic_write_text(run.path / CV_TABLE, format_cv(report))
    final = run.final
    if config.track == "mlflow":
        figures = {f"{key}_{part}": band[part] for key, band in summary.items() for part in ("mean", "sd", "low", "high")}
        if "deferral" in report:
            found = report["deferral"]
            figures.update({"deferral_coverage": found["coverage"], "deferral_folds_at_target": found["folds_at_target"]})
            if found["precision"] is not None:
                figures["deferral_precision"] = found["precision"]
        log_job(kind="cv", name=final.name, directory=final, params={**config.to_dict(), "folds": folds,
                                                                     "workers": workers},
                steps=[{"step": row["fold"], **row} for row in rows], final={**figures, "seconds": seconds},
                artifacts=[CV_FILE, CV_TABLE], seconds=seconds)
    return CVResult(output=final, folds=rows, summary=summary, labels=labels, rows=data.rows, given=data.labels,
                    probs=probs, multi_label=config.multi_label)


def _fold_row(k: int, fold: _Fold, result: FoldResult) -> FoldRow:
    """cv.json's row of a fold: its part sizes, then its figures and training time."""
    row: FoldRow = {"fold": k, "n_train": len(fold.splits.train), "n_val": len(fold.splits.val),
                    "n_test": len(fold.splits.test)}
    for key, value in result.figures.items():
        row[key] = value
    row["train_seconds"] = result.train_seconds
    return row


def _routed(result: FoldResult) -> np.ndarray:
    if result.routed is None:
        raise RuntimeError("a fold of a cross-validation with --target-precision kept no deferral rule")
    return result.routed


def cv_deferral(results: list[FoldResult], decided: np.ndarray, right: np.ndarray) -> CVDeferral:
    """Each fold's rule on its own test fold, and every row's out-of-fold routing pooled (`decided`, `right`: the
    share of each row's decisions that are right), the pooled precision with its 95% Clopper-Pearson interval (over
    the decisions; multi-label: label decisions)."""
    rules = [result.deferral for result in results if result.deferral is not None]
    first = rules[0]["rule"]
    columns = 1 if "per_label" not in first else len(first["per_label"])
    hits, count = int(round(float(right[decided].sum()) * columns)), int(decided.sum()) * columns
    low, high = clopper_pearson(hits, count)
    folds: list[FoldDeferral] = [
        {"fold": k, "threshold": found["rule"]["threshold"], "n": found["n"], "decided": found["decided"],
         "coverage": found["coverage"], "precision": found["precision"]} for k, found in enumerate(rules, 1)]
    target = first["target_precision"]
    return {"target_precision": target, "delta": first["delta"], "n": len(decided), "decided": int(decided.sum()),
            "coverage": float(decided.mean()) if len(decided) else 0.0,
            "precision": hits / count if count else None, "low": low, "high": high,
            "interval": "95% Clopper-Pearson over the pooled decisions", "folds": folds,
            "folds_at_target": sum(f["precision"] is not None and f["precision"] >= target for f in folds),
            "folds_deciding": sum(f["decided"] > 0 for f in folds)}


def cv_sets(per_fold: list[LabelSetFigures]) -> list[CVSetRow]:
    """The label sets of every score, calibration and level: coverage pooled over the folds' test rows (weighted by
    their size), the worst fold's, and the pooled mean size."""
    rows: list[CVSetRow] = []
    sizes = [figures["n_test"] for figures in per_fold]
    for i, first in enumerate(per_fold[0]["rows"]):
        same = [figures["rows"][i] for figures in per_fold]
        rows.append({"score": first["score"], "by_class": first["by_class"], "level": first["level"],
                     "coverage": float(np.average([r["coverage"] for r in same], weights=sizes)),
                     "worst_fold": float(min(r["coverage"] for r in same)),
                     "mean_size": float(np.average([r["mean_size"] for r in same], weights=sizes))})
    return rows


def out_of_fold(jobs: list[_Fold], per_fold: list[np.ndarray], *, n_rows: int, n_labels: int) -> np.ndarray:
    """Every data row's values (probabilities, decisions) from the fold that tested it, in data order."""
    probs = np.full((n_rows, n_labels), np.nan)
    for fold, values in zip(jobs, per_fold):
        probs[fold.held] = values.reshape(len(fold.held), n_labels)
    if np.isnan(probs).any():  # every row is in exactly one test fold; a gap means a fold run lost rows
        raise RuntimeError("cross-validation left rows without an out-of-fold prediction")
    return probs


def format_cv(report: CVReport) -> str:
    keys = list(report["summary"])
    lines = [f"| fold | train / validation / test rows | {' | '.join(FIGURE_NAMES[k] for k in keys)} | train s |",
             "|---|---|" + "---|" * len(keys) + "---|"]
    for row in report["rows"]:
        lines.append(f"| {row['fold']} | {row['n_train']} / {row['n_val']} / {row['n_test']} | "
                     + " | ".join(f"{row[k]:.4f}" for k in keys) + f" | {row['train_seconds']:.0f} |")
    summary = report["summary"]
    lines.append("| mean (sd) | | " + " | ".join(f"{summary[k]['mean']:.4f} ({summary[k]['sd']:.4f})" for k in keys) + " | |")
    lines.append("| 95% interval | | " + " | ".join(f"[{summary[k]['low']:.4f}, {summary[k]['high']:.4f}]" for k in keys)
                 + " | |")
    grouped = f", grouped by {report['grouped_by']}" if report["grouped_by"] else ""
    if "deferral" in report:
        lines += ["", *cv_deferral_lines(report["deferral"])]
    if "sets" in report:
        lines += ["", "Label sets, calibrated in each fold on its own calibration part, on its test fold (coverage "
                  "pooled over every row, and in the worst fold):", "",
                  "| score | by class | level | coverage | worst fold | mean size |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['score']} | {'yes' if r['by_class'] else 'no'} | {r['level']:.0%} | {r['coverage']:.3f} | "
                  f"{r['worst_fold']:.3f} | {r['mean_size']:.2f} |" for r in report["sets"]]
    if "subgroups" in report:
        lines += ["", "By subgroup, on every row's out-of-fold prediction:", "", *subgroup_lines(report["subgroups"])]
    return (f"{report['folds']}-fold cross-validation{grouped}, seed {report['seed']}, {report['seconds']:.0f} s\n\n"
            + "\n".join(lines) + "\n")


def cv_deferral_lines(found: CVDeferral) -> list[str]:
    """cv.md's deferral section: the pooled routing, then one row per fold."""
    target = found["target_precision"]
    lines = [f"Deferral at precision {target:.0%} (level {found['delta']}), each fold's rule chosen on its own "
             f"calibration part and applied to its test fold: {found['folds_at_target']} of {len(found['folds'])} "
             f"folds reached the target ({found['folds_deciding']} decided any text)."]
    if found["precision"] is not None:
        lines[0] += (f" Pooled over the {found['n']} rows: {found['decided']} decided automatically (coverage "
                     f"{found['coverage']:.1%}), realised precision {found['precision']:.3f} ({found['interval']} "
                     f"{found['low']:.3f}-{found['high']:.3f}).")
    lines += ["", "| fold | threshold | test rows | decided | coverage | realised precision |", "|---|---|---|---|---|---|"]
    for f in found["folds"]:
        threshold = "none shown" if f["threshold"] is None else f"{f['threshold']:.3f}"
        precision = "-" if f["precision"] is None else f"{f['precision']:.3f}"
        lines.append(f"| {f['fold']} | {threshold} | {f['n']} | {f['decided']} | {f['coverage']:.1%} | {precision} |")
    return lines
