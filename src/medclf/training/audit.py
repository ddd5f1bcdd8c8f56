"""`medclf audit`: which given labels are probably wrong.

Cross-validation (`medclf cv`'s folds and workers) gives every row a probability from a model that never saw it;
confident learning (cleanlab, core.label_quality) ranks the rows whose given label disagrees with it. The audit
directory holds:

- issues.csv: the flagged rows, worst first: rank, row (0-based data row of the table), the --id-column values,
  given and suggested label, label quality score; the text only with keep_text;
- out_of_fold.parquet: every row's out-of-fold probabilities, given and suggested label, quality and rank (no text);
- audit.md and audit.json: counts per given -> suggested pair, each class's estimated noise rate, the options;
- cv/: the cross-validation run (fold runs, cv.json, cv.md);
- fixed.<ext> (with fix_top=K): a copy of the data with the K top-ranked suggestions applied (the file given is
  never modified).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medclf.config import TrainConfig
from medclf.core.figures import Label
from medclf.core.label_quality import FILTER_BY, SCORE_METHOD, LabelQuality, label_quality, require_cleanlab
from medclf.core.labels import LabeledData
from medclf.core.tables import read_table, table_format
from medclf.errors import MedclfError
from medclf.run.artifacts import StagedRun, atomic_write_json, atomic_write_text
from medclf.run.tracking import log_job
from medclf.training.cv import cross_validate
from medclf.training.jobs import open_job
from medclf.training.splits import read_training_data

log = logging.getLogger(__name__)
ISSUES_FILE = "issues.csv"
OUT_OF_FOLD_FILE = "out_of_fold.parquet"
AUDIT_FILE = "audit.json"
AUDIT_TABLE = "audit.md"
CV_DIR = "cv"
FIXED_STEM = "fixed"
WRITABLE = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl", "parquet": ".parquet"}


@dataclass
class AuditResult:
    output: Path
    issues: pd.DataFrame
    """issues.csv as a frame: the flagged rows, worst first."""
    n_rows: int
    fixed: Path | None
    """The corrected copy of the data (fix_top), else None."""


def audit(config: TrainConfig, *, folds: int = 5, workers: int | None = None, id_columns: list[str] | None = None,
          keep_text: bool = False, fix_top: int | None = None, progress: bool = False) -> AuditResult:
    """Cross-validate with `config`, then rank the rows whose given label the out-of-fold model doubts; write the
    audit directory at config.output (see the module's doc). fix_top=K also writes the data with the K top-ranked
    issues relabelled to the suggestion."""
    require_cleanlab()  # before minutes of training
    if fix_top is not None and (not isinstance(fix_top, int) or isinstance(fix_top, bool) or fix_top < 1):
        raise MedclfError(f"--accept-top must be a positive whole number, got {fix_top!r}.")
    if config.data == "-":
        raise MedclfError("medclf audit reads --data twice (training and the report); pass a file, not standard input.")
    job = open_job(config, prefix="audit-", distributed=False)
    started, output = job.started, job.output
    data, _ = read_training_data(config)
    table = read_table(str(config.data)) if (id_columns or keep_text or fix_top) else None
    missing = [c for c in id_columns or [] if table is not None and c not in table.columns]
    if missing:
        raise MedclfError(f"--id-column {missing[0]!r} is not a column of {config.data}; columns: "
                          f"{', '.join(map(str, table.columns)) if table is not None else ''}.")
    with StagedRun(output, overwrite=config.overwrite) as run:
        stage = run.path
        cv = cross_validate(dataclasses.replace(config, output=str(stage / CV_DIR), overwrite=False, track="none"),
                            folds=folds, progress=progress, workers=workers)
        if cv.rows != data.rows:
            raise RuntimeError("cross-validation read the data in another order than the audit")
        found = label_quality(cv.probs, cv.given, cv.labels, multi_label=cv.multi_label)
        sep = config.label_sep
        issues = issues_frame(found, cv.given, data.rows, table, id_columns or [], data.texts if keep_text else None, sep)
        atomic_write_text(stage / ISSUES_FILE, issues.to_csv(index=False, float_format="%.6f"))
        _write_parquet(stage / OUT_OF_FOLD_FILE, out_of_fold_frame(found, cv.probs, cv.given, cv.labels, data.rows, sep))
        report = {"rows": len(data.rows), "issues": len(found.issues), "folds": folds, "method": config.method,
                  "score": SCORE_METHOD, "filter_by": FILTER_BY, "multi_label": cv.multi_label,
                  "pairs": pair_counts(found, cv.given, sep), "per_class": found.per_class,
                  "cross_validation": cv.summary, "config": config.to_dict(), "fixed": None}
        fixed = None
        if fix_top is not None:
            assert table is not None
            fixed = stage / (FIXED_STEM + WRITABLE.get(table_format(str(config.data)), ".csv"))
            applied = fix_labels(table, found, data, config, top=fix_top, path=fixed)
            report["fixed"] = {"file": fixed.name, "accepted_top": fix_top, "relabelled_rows": applied}
            log.info("Relabelled the %d top-ranked rows in %s (the data given is unchanged).", len(applied), fixed.name)
        atomic_write_json(stage / AUDIT_FILE, report)
        atomic_write_text(stage / AUDIT_TABLE, format_audit(report, config))
    final = run.final
    log.info("Audit: %d of %d rows flagged as probable label issues.", len(found.issues), len(data.rows))
    if config.track == "mlflow":  # the audit's own files only: issues.csv may hold text (--keep-text)
        final_figures = {"rows": report["rows"], "issues": report["issues"],
                         **{f"noise_rate_{c['label']}": c["estimated_noise_rate"] for c in found.per_class},
                         **{f"cv_{key}_mean": band["mean"] for key, band in cv.summary.items()}}
        log_job(kind="audit", name=final.name, directory=final,
                params={**config.to_dict(), "folds": folds, "id_columns": id_columns, "accept_top": fix_top},
                final=final_figures, artifacts=[AUDIT_FILE, AUDIT_TABLE], seconds=time.perf_counter() - started)
    return AuditResult(output=final, issues=issues, n_rows=len(data.rows),
                       fixed=None if fixed is None else final / fixed.name)


def _shown(label: object, sep: str) -> str:
    return sep.join(label) if isinstance(label, tuple) else str(label)


def issues_frame(found: LabelQuality, given: list[Label], rows: list[int], table: pd.DataFrame | None,
                 id_columns: list[str], texts: list[str] | None, sep: str) -> pd.DataFrame:
    """The flagged rows, worst first; text only when `texts` is given."""
    at = found.issues
    frame = pd.DataFrame({"rank": np.arange(1, len(at) + 1), "row": [rows[i] for i in at]})
    for column in id_columns:
        assert table is not None
        frame[column] = table[column].iloc[frame["row"]].to_numpy()
    frame["given_label"] = [_shown(given[i], sep) for i in at]
    frame["suggested_label"] = [_shown(found.suggested[i], sep) for i in at]
    frame["label_quality"] = found.quality[at]
    if texts is not None:
        frame["text"] = [texts[i] for i in at]
    return frame


def out_of_fold_frame(found: LabelQuality, probs: np.ndarray, given: list[Label], labels: list[str], rows: list[int],
                      sep: str) -> pd.DataFrame:
    rank = np.zeros(len(rows), dtype=int)
    rank[found.issues] = np.arange(1, len(found.issues) + 1)
    frame = pd.DataFrame({"row": rows, "given_label": [_shown(g, sep) for g in given],
                          "suggested_label": [_shown(s, sep) for s in found.suggested],
                          "label_quality": found.quality, "is_issue": rank > 0,
                          "issue_rank": pd.array([r if r else None for r in rank], dtype="Int64")})
    for i, lab in enumerate(labels):
        frame[f"prob_{lab}"] = probs[:, i]
    return frame


def pair_counts(found: LabelQuality, given: list[Label], sep: str) -> list[dict[str, Any]]:
    """How many flagged rows go from each given label to each suggested one, most first."""
    counts = Counter((_shown(given[i], sep), _shown(found.suggested[i], sep)) for i in found.issues)
    return [{"given": g, "suggested": s, "rows": n} for (g, s), n in counts.most_common()]


def fix_labels(table: pd.DataFrame, found: LabelQuality, data: LabeledData, config: TrainConfig, *, top: int,
               path: Path) -> list[int]:
    """Write `table` with the `top` worst flagged rows relabelled to the suggestion (write-then-rename); the data rows
    changed (0-based)."""
    fixed = table.copy()
    changed = []
    for i in found.issues[:top]:
        row, suggested = data.rows[i], found.suggested[i]
        column = data.label_column
        if isinstance(column, list):  # multi-label 0/1 columns: one per label
            for name in column:
                fixed.iloc[row, fixed.columns.get_loc(name)] = _like(fixed[name].iloc[row], int(name in suggested))
        else:
            value: Any = config.label_sep.join(suggested) if isinstance(suggested, tuple) else suggested
            if fixed[column].dtype != object:
                fixed[column] = fixed[column].astype(object)
            fixed.iloc[row, fixed.columns.get_loc(column)] = _like(table[column].iloc[row], value)
        changed.append(int(row))
    tmp = path.with_name(path.name + ".tmp")
    fmt = path.suffix.lstrip(".")
    if fmt == "parquet":
        fixed.to_parquet(tmp, index=False)
    elif fmt == "jsonl":
        fixed.to_json(tmp, orient="records", lines=True, force_ascii=False)
    else:
        fixed.to_csv(tmp, index=False, sep="\t" if fmt == "tsv" else ",")
    tmp.replace(path)
    return changed


def _like(original: Any, value: Any) -> Any:
    """`value` in the type the column held (an integer label stays an integer)."""
    if isinstance(original, (bool, np.bool_)):
        return bool(int(value))
    if isinstance(original, (int, np.integer)):
        try:
            return type(original)(value)
        except (TypeError, ValueError):
            return value
    return value


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def format_audit(report: dict[str, Any], config: TrainConfig) -> str:
    rows, issues = report["rows"], report["issues"]
    multi = report["multi_label"]
    lines = [f"# Label audit of {Path(str(config.data)).name}", "",
             f"{issues} of {rows} rows ({issues / max(1, rows):.1%}) flagged as probable label issues by confident "
             f"learning (cleanlab, {report['filter_by']}; quality score {report['score']}) on out-of-fold "
             f"probabilities of {report['folds']}-fold cross-validation with --method {report['method']}.", "",
             "## Flagged rows by given and suggested label", "", "| given | suggested | rows |", "|---|---|---|"]
    lines += [f"| {p['given'] or '(none)'} | {p['suggested'] or '(none)'} | {p['rows']} |" for p in report["pairs"]]
    noise = ("estimated share of all rows whose given 0/1 for the label is wrong" if multi
             else "estimated share of the rows given the class whose true class is another")
    lines += ["", "## Per class", "", f"| label | rows given it | flagged | noise rate ({noise}) |", "|---|---|---|---|"]
    lines += [f"| {c['label']} | {c['rows']} | {c['flagged']} | {c['estimated_noise_rate']:.1%} |"
              for c in report["per_class"]]
    if report["fixed"]:
        lines += ["", f"{len(report['fixed']['relabelled_rows'])} top-ranked rows relabelled in "
                      f"{report['fixed']['file']} (--accept-top {report['fixed']['accepted_top']})."]
    lines += ["", "Rows are 0-based data rows of the table (issues.csv lists them worst first); texts are not shown."]
    return "\n".join(lines) + "\n"
