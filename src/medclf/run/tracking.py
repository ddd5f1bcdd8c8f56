"""Experiment tracking (`--track mlflow`): what a finished medclf job wrote, logged to MLflow.

Each job logs one MLflow run after its directory is complete, from the files every reader uses (train_config.json
through RunSpec, metrics.json, cv.json, ...): the parameters (every option, the data files' hashes, the encoder, the
versions), the per-epoch figures (step = epoch; for the embeddings method, step = each regularisation strength
tried), the final test figures with their interval ends, and the report files as artifacts. Logging after the job
keeps the training loop free of tracking code and works the same under torchrun (the main process logs).

Where: MLFLOW_TRACKING_URI when set (a user's own server works the same), else the local store MLflow itself
defaults to in the current directory, which `mlflow ui` started there reads (MLflow 3: `./mlflow.db`, a SQLite
database, with the artifacts in `./mlruns`; MLflow 2: the `./mlruns` folder); the experiment is
MLFLOW_EXPERIMENT_NAME or "medclf". Nothing logged holds text from the data: parameters are options,
paths and hashes; artifacts are the run's report files, which carry no text by design (tests plant a marker).
MLflow is an optional extra: `pip install "medclf[track]"`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

from medclf.errors import MedclfError
from medclf.run.artifacts import METRICS_FILE, read_json
from medclf.run.runspec import RunSpec

log = logging.getLogger(__name__)
INSTALL_HINT = '--track mlflow needs MLflow: pip install "medclf[track]" (or pip install mlflow), or pass --track none.'
DEFAULT_EXPERIMENT = "medclf"
PARAM_LIMIT = 6000
"""MLflow's longest parameter value; longer ones (a long list of columns) are cut with a mark."""


def require_mlflow() -> ModuleType:
    """The mlflow module, or a one-sentence error that says how to install it (checked before a job starts)."""
    try:
        import mlflow
    except ImportError:
        raise MedclfError(INSTALL_HINT) from None
    return mlflow


def flat_params(values: Mapping[str, object], prefix: str = "") -> dict[str, str]:
    """Nested options as MLflow parameters: dotted keys, lists and None as JSON, values cut at PARAM_LIMIT."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, prefix=f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        out[name] = text if len(text) <= PARAM_LIMIT else text[: PARAM_LIMIT - 12] + "...(cut)"
    return out


def numeric(values: Mapping[str, object]) -> dict[str, float]:
    """The finite numbers of a flat dict, as MLflow metrics (names keep only the characters MLflow allows)."""
    return {re.sub(r"[^\w\-. /]", "_", k): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _step(row: Mapping[str, object]) -> int:
    """A step row's step number (every row log_job is given carries one)."""
    step = row["step"]
    if not isinstance(step, (int, float)):
        raise TypeError(f"a step row needs a number as its 'step', not {type(step).__name__}")
    return int(step)


def log_job(*, kind: str, name: str, directory: Path, params: Mapping[str, object],
            steps: Sequence[Mapping[str, object]] | None = None, final: Mapping[str, object] | None = None,
            artifacts: list[str] | None = None, tags: dict[str, str] | None = None,
            seconds: float | None = None) -> str:
    """Log one finished job as an MLflow run; its run id. steps: per-step figures (each with its 'step'); final: the
    job's end figures; artifacts: file names in `directory` (missing ones are passed over); seconds: how long the job
    took (the run's start time is set that far back, so MLflow shows the job's real duration, not the logging's)."""
    mlflow = require_mlflow()
    from mlflow.entities import Metric, Param

    from medclf._version import __version__

    uri = mlflow.get_tracking_uri()  # MLFLOW_TRACKING_URI, else MLflow's own local default (what `mlflow ui` reads)
    experiment = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    client = mlflow.MlflowClient()
    end = int(time.time() * 1000)
    start = end - int(1000 * seconds) if seconds else end
    run = client.create_run(experiment.experiment_id, start_time=start, run_name=name, tags={
        "medclf.kind": kind, "medclf.version": __version__, "medclf.directory": str(directory.resolve()), **(tags or {})})
    run_id = str(run.info.run_id)
    try:
        values = list(flat_params(params).items())
        for i in range(0, len(values), 100):  # MLflow takes at most 100 parameters per batch
            client.log_batch(run_id, params=[Param(k, v) for k, v in values[i : i + 100]])
        metrics = [Metric(k, v, end, _step(row)) for row in steps or []
                   for k, v in numeric({k: v for k, v in row.items() if k != "step"}).items()]
        metrics += [Metric(k, v, end, 0) for k, v in numeric(final or {}).items()]
        for i in range(0, len(metrics), 1000):  # and at most 1,000 metrics
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        for artifact in artifacts or []:
            path = directory / artifact
            if path.is_file():
                client.log_artifact(run_id, str(path), artifact_path=str(Path(artifact).parent) if "/" in artifact else None)
        client.set_terminated(run_id, status="FINISHED", end_time=end)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    log.info("Tracked in MLflow (%s): run %s of experiment %s.", uri, run_id, experiment.name)
    return run_id


RUN_ARTIFACTS = ["report.md", "report.html", "metrics.json", "train_config.json", "train.log", "confusion_matrix.png",
                 "calibration.png", "training.png", "subgroups.png", "deferral.png", "model/README.md"]


def metric_name(name: str) -> str:
    """`name` with the characters MLflow refuses in a metric name (it allows letters, digits, _ - . space /)
    replaced by '_'."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name)


def track_train(run_dir: Path) -> str:
    """Log a finished `medclf train` run from its files."""
    spec = RunSpec.read(run_dir)
    metrics = read_json(run_dir / METRICS_FILE)
    test = metrics["test"]
    final: dict[str, object] = {f"test_{k}": v for k, v in test.items() if not isinstance(v, (dict, list))}
    for key, band in (test.get("intervals") or {}).items():
        if isinstance(band, dict):
            final[f"test_{key}_low"], final[f"test_{key}_high"] = band.get("low"), band.get("high")
    cal = test.get("calibration") or {}
    final.update({f"test_{k}": v for k, v in cal.items() if k.startswith(("ece", "brier"))})
    final.update({f"baseline_tfidf_{k}": v for k, v in (metrics.get("baseline_tfidf") or {}).items()})
    for column, rows in (test.get("subgroups") or {}).get("columns", {}).items():  # the judged slices' figures
        for row in rows:
            for key, value in (row.get("figures") or {}).items():
                final[metric_name(f"test_slice.{column}.{row['value']}.{key}")] = value
    for row in (test.get("sets") or {}).get("rows", []):  # conformal label sets: coverage and size per level
        name = f"test_sets.{row['score']}{'_by_class' if row['by_class'] else ''}.{row['level']}"
        final[f"{name}.coverage"], final[f"{name}.mean_size"] = row["coverage"], row["mean_size"]
    deferral = test.get("deferral")
    if deferral:
        final.update({"test_deferral.coverage": deferral["coverage"], "test_deferral.precision": deferral["precision"],
                      "test_deferral.threshold": deferral["rule"]["threshold"]})
    final.update({k: v for k, v in metrics["timing"].items()})
    # step = the epoch (embeddings: the i-th C tried); the history's optimizer step count goes along as a metric
    steps = [{**{k: v for k, v in row.items() if k != "step"}, "optimizer_step": row.get("step"),
              "step": row.get("epoch", i + 1)} for i, row in enumerate(metrics.get("history") or [])]
    params = {**spec.config.to_dict(), "run.data_sha256": spec.data_sha256, "run.model_source": spec.model_source,
              "run.task": spec.task, "run.labels": spec.labels, "run.precision": spec.precision,
              "run.device": spec.device, "run.split": spec.split, "run.versions": spec.versions,
              "run.few_shot": metrics.get("few_shot"), "run.selected": metrics.get("selected")}
    return log_job(kind="train", name=run_dir.name, directory=run_dir, params=params, steps=steps, final=final,
                   artifacts=RUN_ARTIFACTS, tags={"medclf.method": spec.method, "medclf.task": spec.task},
                   seconds=metrics["timing"].get("total_seconds"))
