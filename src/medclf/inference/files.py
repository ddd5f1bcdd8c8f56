"""File-level prediction for the CLI: read texts, classify, write CSV, JSONL or Parquet (no text unless asked),
chunk by chunk for files of any size, resumable after an interruption."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medclf.config import CHUNK_ROWS, LoadOptions
from medclf.core.columns import join_texts, resolve_columns
from medclf.core.conformal import SetRequest
from medclf.core.tables import iter_table, read_table, row_numbers, table_format
from medclf.errors import MedclfError
from medclf.inference.classifier import Predictions, Routed, TextClassifier
from medclf.inference.explain import DEFAULT_STEPS
from medclf.run.artifacts import atomic_write_text

log = logging.getLogger(__name__)


OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def output_format(output: str | None, formats: dict[str, str]) -> str:
    """The format an --output name asks for by its extension ('jsonl' for stdout)."""
    if output is None:
        return "jsonl"
    suffix = Path(output).suffix.lower()
    if suffix not in formats:
        known = ", ".join(dict.fromkeys(formats))
        raise MedclfError(f"Unknown output format '{suffix or '(none)'}': use one of {known}.")
    return formats[suffix]


def iter_inputs(
    input: str | None, texts: list[str] | None, *, text_columns: list[str] | None, default_columns: list[str] | None,
    drop_empty: bool, chunk_rows: int | None = None,
) -> Iterator[tuple[pd.DataFrame, list[str], list[str]]]:
    """The rows to predict, chunk by chunk (all at once without chunk_rows): (other columns to keep, with `row`
    the 0-based row of the input; texts; text column names). Empty texts are refused (rows counted over the
    whole input) or, with drop_empty, skipped."""
    if input is not None and texts:
        raise MedclfError("Pass texts as arguments or with --input, not both.")
    if input is None and not texts:
        raise MedclfError("No texts to classify; pass them as arguments or with --input FILE.")
    if input is None:
        frames: Iterator[pd.DataFrame] = iter([pd.DataFrame({"text": list(texts or [])})])
    elif chunk_rows is None:
        frames = iter([read_table(input, allow_txt=True)])
    else:
        frames = iter_table(input, chunk_rows=chunk_rows, allow_txt=True)
    columns: list[str] | None = None
    offset = 0
    for frame in frames:
        if columns is None:
            if input is None or table_format(input, allow_txt=True) == "txt":
                columns = ["text"]
            else:
                wanted = text_columns or (
                    default_columns if default_columns and all(c in frame.columns for c in default_columns) else None
                )
                columns, _ = resolve_columns(frame, wanted, None, source=input, need_label=False)
        joined = join_texts(frame, columns)
        empty = [i for i, t in enumerate(joined) if t is None]
        frame = frame.assign(row=range(offset, offset + len(frame)))
        if empty:
            if not drop_empty:
                raise MedclfError(
                    f"{len(empty)} empty text(s) to classify (rows {row_numbers(empty, offset=offset)}, counting from 1); "
                    "remove them or pass --drop-empty to skip them."
                )
            keep = [i for i, t in enumerate(joined) if t is not None]
            frame = frame.iloc[keep].reset_index(drop=True)
            joined = [joined[i] for i in keep]
        offset += len(joined) + len(empty)
        yield frame, [t for t in joined if t is not None], columns


def read_inputs(
    input: str | None, texts: list[str] | None, *, text_columns: list[str] | None, default_columns: list[str] | None,
    drop_empty: bool,
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The rows to predict, all at once: (other columns to keep, texts, text column names)."""
    return next(iter_inputs(input, texts, text_columns=text_columns, default_columns=default_columns,
                            drop_empty=drop_empty))


def prediction_records(labels: list[str], predictions: Predictions, top_k: int | None,
                       sets: list[list[str]] | None = None, routed: list[Routed] | None = None) -> list[dict[str, Any]]:
    """One JSON-ready record per text: label, score, every probability (or the top k); in chunk mode the character
    span of the window that weighed most for the label; with `sets`, each text's conformal label set; with `routed`
    (a run with a deferral rule), whether the text goes to a person (`deferred`). Multi-label:
    `labels` (those at or above their thresholds) instead of label and score."""
    records = []
    for n, row in enumerate(predictions.probabilities):
        order = np.argsort(-row, kind="stable")
        record: dict[str, Any] = (
            {"labels": list(predictions.decided[n])} if predictions.multi_label
            else {"label": labels[order[0]], "score": float(row[order[0]])}
        )
        if top_k is None:
            record["probabilities"] = {labels[i]: float(row[i]) for i in range(len(labels))}
        else:
            record["top_k"] = [{"label": labels[i], "probability": float(row[i])} for i in order[:top_k]]
        if sets is not None:
            record["set"] = sets[n]
        if routed is not None:
            record["deferred"] = routed[n].deferred
        span = predictions.windows[n]
        if span is not None:
            record["window"] = {"start": span[0], "end": span[1]}
        records.append(record)
    return records


def predict_file(
    run_dir: str,
    *,
    texts: list[str] | None = None,
    input: str | None = None,
    output: str | None = None,
    text_columns: list[str] | None = None,
    top_k: int | None = None,
    keep_text: bool = False,
    drop_empty: bool = False,
    options: LoadOptions | None = None,
    classifier: TextClassifier | None = None,
    chunk_rows: int = CHUNK_ROWS,
    resume: bool = False,
    progress: bool = False,
    sets: SetRequest | None = None,
) -> int:
    """Classify texts from arguments or a file; write CSV, JSONL or Parquet to `output`, or JSONL to stdout.

    A file is read and classified `chunk_rows` rows at a time, so memory stays flat however large it is.
    Each finished chunk is kept as a part in a hidden folder beside the output (.NAME.parts/); the output
    appears under its name only once every chunk is done (the parts are joined into a temporary file that is
    renamed). After an interruption, `resume` continues from the last complete chunk (the same input file,
    unchanged, and the same options); without it, leftover parts are discarded. `sets`: also each text's conformal
    label set (`label_set`, joined with the run's label separator in CSV and Parquet, and `set_size`). Returns the
    rows written."""
    if top_k is not None and top_k < 1:
        raise MedclfError(f"--top-k must be at least 1, got {top_k}.")
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise MedclfError(f"--chunk-rows must be a positive whole number, got {chunk_rows!r}.")
    fmt = output_format(output, OUTPUT_FORMATS)
    if resume and (output is None or input is None):
        raise MedclfError("--resume continues an interrupted --input file job with an --output file; pass both.")
    clf = classifier or TextClassifier.load(run_dir, options)
    if sets is not None:
        clf.conformal_sets()  # a run without a calibration part says so before any input is read
    chunks = iter_inputs(input, texts, text_columns=text_columns, drop_empty=drop_empty,
                         default_columns=clf.spec.text_columns if clf.spec else None, chunk_rows=chunk_rows)
    k = None if top_k is None else min(top_k, len(clf.labels))
    render = functools.partial(_render_chunk, clf, fmt=fmt, top_k=k, keep_text=keep_text, sets=sets)
    if output is None:  # stdout: each chunk as soon as it is done
        count = 0
        for frame, batch, columns in chunks:
            sys.stdout.write(render(frame, batch, columns))
            sys.stdout.flush()
            count += len(batch)
        return count
    job = {"input": _file_signature(input), "run_dir": str(Path(run_dir).resolve()), "chunk_rows": chunk_rows,
           "format": fmt, "options": {"text_columns": text_columns, "top_k": top_k, "keep_text": keep_text,
                                      "drop_empty": drop_empty, "long_text": clf.long_text, "backend": clf.backend,
                                      "sets": None if sets is None else sets.describe()}}
    parts = _Parts(Path(output), job, resume=resume)
    bar = _row_bar(input, progress)
    count = 0
    try:
        for i, (frame, batch, columns) in enumerate(chunks):
            if not parts.done(i):
                parts.write(i, render(frame, batch, columns))
            count += len(batch)
            if bar is not None:
                bar.update(len(frame))
    finally:
        if bar is not None:
            bar.close()
    parts.finish()
    return count


def _render_chunk(
    clf: TextClassifier, frame: pd.DataFrame, batch: list[str], columns: list[str], *, fmt: str, top_k: int | None,
    keep_text: bool, sets: SetRequest | None = None,
) -> Any:
    """One chunk's predictions: JSONL text, CSV text, or (Parquet) a DataFrame."""
    labels = clf.labels
    predictions = clf.predictions(batch)
    probs = predictions.probabilities
    found = None if sets is None else clf.label_sets(probs, sets)
    routed = None if clf.deferral is None else clf.route(probs)
    records = prediction_records(labels, predictions, top_k, found, routed)
    kept = frame if keep_text else frame.drop(columns=[c for c in columns if c in frame.columns])
    outputs = {"label", "labels", "score", "window_start", "window_end", "probabilities", "top_k", "window", "set",
               "label_set", "set_size", "deferred"}
    clash = [c for c in kept.columns if c in outputs or re.fullmatch(r"prob_.*|top\d+_(label|prob)", str(c))]
    if clash:  # an input column named like an output one (a true `label`, say) is kept as input_<name>
        kept = kept.rename(columns={c: f"input_{c}" for c in clash})
    if fmt == "jsonl":
        lines = [json.dumps({**_plain(meta), **rec}, ensure_ascii=False)
                 for meta, rec in zip(kept.to_dict(orient="records"), records)]
        return "\n".join(lines) + ("\n" if lines else "")
    table = kept.copy()
    if clf.multi_label:  # the labels of a text joined with the run's separator ('' for none)
        table["labels"] = [(clf.spec.label_sep if clf.spec else "|").join(r["labels"]) for r in records]
    else:
        table["label"] = [r["label"] for r in records]
        table["score"] = [r["score"] for r in records]
        if found is not None:
            table["label_set"] = [(clf.spec.label_sep if clf.spec else "|").join(labs) for labs in found]
            table["set_size"] = [len(labs) for labs in found]
    if routed is not None:
        table["deferred"] = [r.deferred for r in routed]
    if clf.long_text == "chunk":
        table["window_start"] = [r.get("window", {}).get("start") for r in records]
        table["window_end"] = [r.get("window", {}).get("end") for r in records]
    if top_k is None:
        for i, lab in enumerate(labels):
            table[f"prob_{lab}"] = probs[:, i]
    else:
        for j in range(top_k):
            table[f"top{j + 1}_label"] = [r["top_k"][j]["label"] for r in records]
            table[f"top{j + 1}_prob"] = [r["top_k"][j]["probability"] for r in records]
    if fmt == "parquet":
        return table
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, float_format="%.6f")
    return buffer.getvalue()


def _file_signature(path: str | None) -> dict[str, Any] | None:
    if path is None or path == "-":
        return None
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _row_bar(input: str | None, enabled: bool) -> Any:
    if not enabled or input is None:
        return None
    from tqdm.auto import tqdm

    from medclf.core.tables import count_rows

    return tqdm(total=count_rows(input), unit="row", unit_scale=True, desc="predict", dynamic_ncols=True)


class _Parts:
    """Finished chunks of one output file, kept in a hidden folder beside it until all are there."""

    def __init__(self, output: Path, job: dict[str, Any], *, resume: bool) -> None:
        self.output = output
        self.fmt = job["format"]
        self.folder = output.parent / f".{output.name}.parts"
        manifest = self.folder / "job.json"
        if self.folder.exists():
            earlier = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else None
            if resume and earlier != job:
                raise MedclfError(
                    f"{self.folder} holds an interrupted job for another input file, run or options (or the input "
                    "changed since); rerun without --resume to start over."
                )
            if not resume:
                log.info("Discarding the parts of an earlier interrupted job (%s); --resume would continue it.",
                         self.folder.name)
                shutil.rmtree(self.folder)
        elif resume:
            log.info("Nothing to resume for %s; starting from the first row.", output.name)
        if not self.folder.exists():
            output.parent.mkdir(parents=True, exist_ok=True)
            self.folder.mkdir()
            atomic_write_text(manifest, json.dumps(job, indent=1) + "\n")
        self.skipped = 0

    def _path(self, i: int) -> Path:
        return self.folder / f"part-{i:06d}.{self.fmt}"

    def done(self, i: int) -> bool:
        if self._path(i).is_file():
            self.skipped += 1
            return True
        return False

    def write(self, i: int, rendered: Any) -> None:
        path = self._path(i)
        tmp = path.with_name(path.name + ".tmp")
        if self.fmt == "parquet":
            rendered.to_parquet(tmp, index=False)
        else:
            tmp.write_text(rendered, encoding="utf-8")
        os.replace(tmp, path)

    def finish(self) -> None:
        """Join the parts into a temporary file beside the output, rename it into place, drop the parts."""
        if self.skipped:
            log.info("Resumed: %d chunk(s) were already done.", self.skipped)
        paths = sorted(self.folder.glob(f"part-*.{self.fmt}"))
        tmp = self.output.with_name(f".{self.output.name}.partial")
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = None
            try:
                for path in paths:
                    table = pq.read_table(path)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)
                if writer is None:
                    pq.write_table(pa.table({}), tmp)
            finally:
                if writer is not None:
                    writer.close()
        else:
            with open(tmp, "wb") as out:
                for n, path in enumerate(paths):
                    with open(path, "rb") as part:
                        if self.fmt == "csv" and n > 0:
                            part.readline()  # every CSV part starts with the header; keep the first one only
                        shutil.copyfileobj(part, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, self.output)
        shutil.rmtree(self.folder, ignore_errors=True)


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe values (numpy scalars, NaN, timestamps) for the kept columns."""
    out = {}
    for key, value in record.items():
        if isinstance(value, float) and value != value:
            value = None
        elif hasattr(value, "item"):
            value = value.item()
        elif not isinstance(value, (str, int, float, bool, type(None), list, dict)):
            value = str(value)
        out[str(key)] = value
    return out


EXPLAIN_FORMATS = {".html": "html", ".htm": "html", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def explain_file(
    run_dir: str, *, texts: list[str] | None = None, input: str | None = None, output: str | None = None,
    method: str = "integrated-gradients", target: str | None = None, steps: int = DEFAULT_STEPS,
    text_columns: list[str] | None = None, drop_empty: bool = False, options: LoadOptions | None = None,
) -> int:
    """Explain texts from arguments or a file; write HTML, JSON or JSONL to `output` (atomically) or JSONL to
    stdout. Returns the number of texts explained."""
    from medclf.inference.explain import METHODS, Explainer, explanations_html

    fmt = output_format(output, EXPLAIN_FORMATS)
    if method not in METHODS:
        raise MedclfError(f"--method must be one of {', '.join(METHODS)}, not {method!r}.")
    clf = TextClassifier.load(run_dir, options or LoadOptions(backend="torch"))
    if target is not None and target not in clf.labels:
        raise MedclfError(f"--target {target!r} is not a label of this model; its labels are: {', '.join(clf.labels)}.")
    _, batch, _ = read_inputs(input, texts, text_columns=text_columns,
                              default_columns=clf.spec.text_columns if clf.spec else None, drop_empty=drop_empty)
    explainer = Explainer(clf)
    found = [explainer.explain(text, method=method, target=target, steps=steps) for text in batch]
    if fmt == "html":
        text = explanations_html(found)
    elif fmt == "json":
        text = json.dumps([e.to_dict() for e in found], ensure_ascii=False, indent=1) + "\n"
    else:
        text = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in found)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(output, text)
    return len(found)
