"""File-level prediction for the CLI: read texts, classify, write CSV or JSONL (no text unless asked)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medclf.artifacts import atomic_write_text
from medclf.data import join_texts, read_table, resolve_columns, table_format
from medclf.errors import MedclfError
from medclf.predict import TextClassifier

OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def read_inputs(
    input: str | None, texts: list[str] | None, *, text_columns: list[str] | None, default_columns: list[str] | None,
    drop_empty: bool,
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The rows to predict: (other columns to keep, texts, text column names)."""
    if input is not None and texts:
        raise MedclfError("Pass texts as arguments or with --input, not both.")
    if input is None and not texts:
        raise MedclfError("No texts to classify; pass them as arguments or with --input FILE.")
    if input is None:
        frame = pd.DataFrame({"text": list(texts or [])})
        columns = ["text"]
    else:
        frame = read_table(input, allow_txt=True)
        if table_format(input, allow_txt=True) == "txt":
            columns = ["text"]
        else:
            wanted = text_columns or (
                default_columns if default_columns and all(c in frame.columns for c in default_columns) else None
            )
            columns, _ = resolve_columns(frame, wanted, None, source=input, need_label=False)
    joined = join_texts(frame, columns)
    empty = [i for i, t in enumerate(joined) if t is None]
    frame = frame.assign(row=range(len(frame)))
    if empty:
        if not drop_empty:
            rows = ", ".join(str(i + 1) for i in empty[:5]) + (", ..." if len(empty) > 5 else "")
            raise MedclfError(
                f"{len(empty)} empty text(s) to classify (rows {rows}, counting from 1); "
                "remove them or pass --drop-empty to skip them."
            )
        keep = [i for i, t in enumerate(joined) if t is not None]
        frame = frame.iloc[keep].reset_index(drop=True)
        joined = [joined[i] for i in keep]
    return frame, [t for t in joined if t is not None], columns


def prediction_records(
    labels: list[str], probs: np.ndarray, top_k: int | None, windows: list[tuple[int, int] | None] | None = None,
    *, predicted: list[list[str]] | None = None,
) -> list[dict[str, Any]]:
    """One JSON-ready record per text: label, score, every probability (or the top k); with `windows`
    (long_text='chunk'), the character span of the window that weighed most for the label.
    Multi-label (`predicted`: each text's labels at or above their thresholds): `labels` instead of label
    and score."""
    records = []
    for n, row in enumerate(probs):
        order = np.argsort(-row, kind="stable")
        record: dict[str, Any] = (
            {"labels": list(predicted[n])} if predicted is not None
            else {"label": labels[order[0]], "score": float(row[order[0]])}
        )
        if top_k is None:
            record["probabilities"] = {labels[i]: float(row[i]) for i in range(len(labels))}
        else:
            record["top_k"] = [{"label": labels[i], "probability": float(row[i])} for i in order[:top_k]]
        if windows is not None and windows[n] is not None:
            record["window"] = {"start": windows[n][0], "end": windows[n][1]}
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
    batch_size: int = 16,
    keep_text: bool = False,
    drop_empty: bool = False,
    backend: str = "auto",
    classifier: TextClassifier | None = None,
    long_text: str | None = None,
) -> int:
    """Classify texts from arguments or a file; write CSV/JSONL to `output` (atomically) or JSONL to stdout."""
    if top_k is not None and top_k < 1:
        raise MedclfError(f"--top-k must be at least 1, got {top_k}.")
    fmt = "jsonl"
    if output is not None:
        suffix = Path(output).suffix.lower()
        if suffix not in OUTPUT_FORMATS:
            raise MedclfError(f"Unknown output format '{suffix or '(none)'}': use .csv or .jsonl.")
        fmt = OUTPUT_FORMATS[suffix]
    clf = classifier or TextClassifier.load(run_dir, batch_size=batch_size, backend=backend, long_text=long_text)
    frame, batch, columns = read_inputs(
        input, texts, text_columns=text_columns, default_columns=clf.config.get("run", {}).get("text_columns"),
        drop_empty=drop_empty,
    )
    labels = clf.labels
    k = None if top_k is None else min(top_k, len(labels))
    probs, windows = clf.predict_with_windows(batch, batch_size=batch_size)
    records = prediction_records(labels, probs, k, windows if clf.long_text == "chunk" else None,
                                 predicted=clf.decide(probs) if clf.multi_label else None)
    kept = frame if keep_text else frame.drop(columns=[c for c in columns if c in frame.columns])
    kept_records = kept.to_dict(orient="records")
    if fmt == "jsonl":
        lines = [json.dumps({**_plain(meta), **rec}, ensure_ascii=False) for meta, rec in zip(kept_records, records)]
        text = "\n".join(lines) + ("\n" if lines else "")
    else:
        table = kept.copy()
        if clf.multi_label:  # the labels of a text joined with the run's separator ('' for none)
            table["labels"] = [clf.config.get("config", {}).get("label_sep", "|").join(r["labels"]) for r in records]
        else:
            table["label"] = [r["label"] for r in records]
            table["score"] = [r["score"] for r in records]
        if clf.long_text == "chunk":
            table["window_start"] = [r.get("window", {}).get("start") for r in records]
            table["window_end"] = [r.get("window", {}).get("end") for r in records]
        if k is None:
            for i, lab in enumerate(labels):
                table[f"prob_{lab}"] = probs[:, i]
        else:
            for j in range(k):
                table[f"top{j + 1}_label"] = [r["top_k"][j]["label"] for r in records]
                table[f"top{j + 1}_prob"] = [r["top_k"][j]["probability"] for r in records]
        buffer = io.StringIO()
        table.to_csv(buffer, index=False, float_format="%.6f")
        text = buffer.getvalue()
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(output, text)
    return len(records)


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
