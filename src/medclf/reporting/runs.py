"""`medclf runs`: one row per run under a folder, to compare them (which encoder, options and data won).

Train runs (read through RunSpec and metrics.json) and cross-validations (cv.json: the mean over the folds and its
t interval; their fold runs are not listed again) are found at any depth; hidden (staging) folders are passed over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from medclf.core.figures import Subgroups
from medclf.core.methods import method_of
from medclf.core.tasks import task_of
from medclf.errors import MedclfError
from medclf.run.artifacts import CV_FILE, METRICS_FILE, is_run_dir, read_json
from medclf.run.runspec import RunSpec

COLUMNS = ["run", "kind", "created", "data", "data_sha256", "encoder", "method", "task", "options", "macro_f1",
           "macro_f1_low", "macro_f1_high", "accuracy", "worst_slice", "train_seconds"]


def find_runs(root: str | Path) -> pd.DataFrame:
    """The runs and cross-validations under `root`, one row each (COLUMNS), oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise MedclfError(f"{root} is not a folder; pass the folder that holds your runs (default: runs).")
    rows: list[dict[str, Any]] = []
    for here, dirs, _ in os.walk(root):
        path = Path(here)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if is_run_dir(path) and (path / METRICS_FILE).is_file():
            rows.append(_train_row(path, root))
            dirs[:] = []
        elif (path / CV_FILE).is_file():
            row = _cv_row(path, root)
            if row is not None:
                rows.append(row)
            dirs[:] = []
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values("created", kind="stable").reset_index(drop=True)


def _train_row(path: Path, root: Path) -> dict[str, Any]:
    spec = RunSpec.read(path)
    metrics = read_json(path / METRICS_FILE)
    test = metrics["test"]
    band = test.get("intervals", {}).get("macro_f1") or {}
    accuracy_key = task_of(test).accuracy_key
    return {"run": str(path.relative_to(root)) if path != root else path.name, "kind": "train", "created": spec.created,
            "data": Path(spec.data_file).name, "data_sha256": (spec.data_sha256.get("data") or "")[:12],
            "encoder": spec.config.model, "method": spec.method, "task": spec.task,
            "options": method_of(spec.method).runs_options(spec.config) + (", few labels" if metrics.get("few_shot") else ""),
            "macro_f1": test["macro_f1"], "macro_f1_low": band.get("low"), "macro_f1_high": band.get("high"),
            "accuracy": test.get(accuracy_key), "worst_slice": worst_slice(test.get("subgroups")),
            "train_seconds": metrics["timing"]["train_seconds"]}


def _cv_row(path: Path, root: Path) -> dict[str, Any] | None:
    """A cross-validation's row: its options and provenance from its first fold's run (RunSpec), its figures from
    cv.json (the mean over the folds and its t interval). None where the folds are gone."""
    report = read_json(path / CV_FILE)
    first = path / "fold-1"
    if not is_run_dir(first):
        return None
    spec = RunSpec.read(first)
    config = spec.config
    summary = report["summary"]
    accuracy = summary.get("accuracy") or summary.get("subset_accuracy") or {}
    return {"run": str(path.relative_to(root)) if path != root else path.name, "kind": f"cv ({report['folds']} folds)",
            "created": spec.created, "data": Path(spec.data_file).name,
            "data_sha256": (spec.data_sha256.get("data") or "")[:12], "encoder": config.model, "method": spec.method,
            "task": spec.task, "options": method_of(spec.method).runs_options(config), "macro_f1": summary["macro_f1"]["mean"],
            "macro_f1_low": summary["macro_f1"]["low"], "macro_f1_high": summary["macro_f1"]["high"],
            "accuracy": accuracy.get("mean"), "worst_slice": None, "train_seconds": sum(r.get("train_seconds", 0.0) for r in report["rows"])}


def worst_slice(subgroups: Subgroups | None) -> str | None:
    """The judged slice with the largest macro-F1 shortfall against the whole test part, 'column = value -0.081'."""
    if not subgroups:
        return None
    gaps = [(row["gap"]["macro_f1"], column, row["value"]) for column, rows in subgroups["columns"].items()
            for row in rows if row["judged"] and row["gap"].get("macro_f1") is not None]
    if not gaps:
        return None
    gap, column, value = min(gaps, key=lambda g: (g[0] or 0.0, g[1], g[2]))
    return f"{column} = {value} {gap:+.3f}"


def format_runs(frame: pd.DataFrame) -> str:
    """A markdown table of find_runs' rows."""
    lines = ["| run | kind | created | data (sha256) | encoder | method | options | test macro-F1 (95% interval) | "
             "accuracy | worst subgroup (macro-F1 gap) | training s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in frame.itertuples(index=False):
        band = (f" ({row.macro_f1_low:.3f}-{row.macro_f1_high:.3f})"
                if pd.notna(row.macro_f1_low) and pd.notna(row.macro_f1_high) else "")
        accuracy = f"{row.accuracy:.3f}" if pd.notna(row.accuracy) else ""
        lines.append(f"| {row.run} | {row.kind} | {str(row.created)[:19]} | {row.data} ({row.data_sha256}) | "
                     f"{row.encoder} | {row.method}{' multi-label' if row.task == 'multi-label' else ''} | {row.options} | "
                     f"{row.macro_f1:.3f}{band} | {accuracy} | {row.worst_slice or ''} | {row.train_seconds:.0f} |")
    return "\n".join(lines) + "\n"
