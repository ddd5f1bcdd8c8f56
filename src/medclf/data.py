"""Reading and validating tables of labelled text.

Data is validated here, where it enters. Error messages name rows, columns,
counts and labels, never the text itself.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from medclf.errors import MedclfError

log = logging.getLogger(__name__)

TABLE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
TEXT_FORMATS = {".txt": "txt"}
LABEL_COLUMN_HINTS = ("label", "class", "category", "target", "specialty", "condition")
DEMO_NAME = "demo (embedded, invented clinical snippets)"


def demo_data_path() -> Path:
    """Path of the embedded demo table (invented snippets, no patient data)."""
    return Path(str(resources.files("medclf") / "demo" / "clinical_snippets.csv"))


def table_format(path: str, *, allow_txt: bool = False) -> str:
    if path == "-":
        return "csv"
    suffix = Path(path).suffix.lower()
    if suffix in TABLE_FORMATS:
        return TABLE_FORMATS[suffix]
    if allow_txt and suffix in TEXT_FORMATS:
        return "txt"
    known = sorted(TABLE_FORMATS) + (sorted(TEXT_FORMATS) if allow_txt else [])
    raise MedclfError(
        f"Unknown file format '{suffix or '(no extension)'}' for {path}: use one of {', '.join(known)}."
    )


def read_table(path: str, *, allow_txt: bool = False) -> pd.DataFrame:
    """Read a table by its extension, every column as it is stored (text stays text)."""
    fmt = table_format(path, allow_txt=allow_txt)
    if path != "-":
        p = Path(path)
        if not p.exists():
            raise MedclfError(f"File not found: {path}; check the path.")
        if p.is_dir():
            raise MedclfError(f"{path} is a directory; pass a data file.")
        if p.stat().st_size == 0:
            raise MedclfError(f"{path} is empty; it needs a header row and data rows.")
    try:
        if fmt in ("csv", "tsv"):
            source = io.StringIO(sys.stdin.read()) if path == "-" else path
            frame = pd.read_csv(
                source,
                sep="," if fmt == "csv" else "\t",
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding="utf-8",
            )
        elif fmt == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            with open(path, encoding="utf-8") as handle:
                lines = [line.rstrip("\r\n") for line in handle]
            frame = pd.DataFrame({"text": lines})
    except UnicodeDecodeError as exc:
        raise MedclfError(
            f"{path} is not valid UTF-8 (bad byte at position {exc.start}); re-save it as UTF-8, "
            "e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`."
        ) from None
    except pd.errors.EmptyDataError:
        raise MedclfError(f"{path} holds no rows; it needs a header row and data rows.") from None
    except pd.errors.ParserError as exc:
        where = re.search(r"line \d+", str(exc))
        raise MedclfError(
            f"{path} could not be parsed as {fmt.upper()}"
            f"{' (' + where.group(0) + ')' if where else ''}; check its delimiter and quoting."
        ) from None
    except ValueError:
        raise MedclfError(f"{path} could not be parsed as {fmt.upper()}; check that the file matches its extension.") from None
    except Exception as exc:  # pyarrow and friends raise many types for corrupt files
        if fmt == "parquet":
            raise MedclfError(f"{path} could not be read as Parquet ({type(exc).__name__}); check the file.") from None
        raise
    frame.columns = [str(c) for c in frame.columns]
    if len(frame) == 0:
        raise MedclfError(f"{path} holds a header but no data rows.")
    return frame


@dataclass
class LabeledData:
    """Texts and string labels read from one table."""

    texts: list[str]
    labels: list[str]
    source: str
    text_columns: list[str]
    label_column: str
    rows: list[int]
    """0-based data-row index of each kept row in the source table."""
    n_dropped: int = 0

    def subset(self, indices: list[int]) -> LabeledData:
        return LabeledData(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            source=self.source,
            text_columns=self.text_columns,
            label_column=self.label_column,
            rows=[self.rows[i] for i in indices],
        )

    def __len__(self) -> int:
        return len(self.texts)


def resolve_columns(
    frame: pd.DataFrame, text_columns: list[str] | None, label_column: str | None, *, source: str, need_label: bool
) -> tuple[list[str], str | None]:
    """Find the text and label columns, guessing only when there is exactly one candidate."""
    columns = list(frame.columns)
    listing = ", ".join(columns)
    if label_column is not None:
        if label_column not in columns:
            raise MedclfError(f"Label column '{label_column}' is not in {source}; its columns are: {listing}.")
    elif need_label:
        if "label" in columns:
            label_column = "label"
        else:
            candidates = [c for c in columns if any(h in c.lower() for h in LABEL_COLUMN_HINTS)]
            if len(candidates) != 1:
                raise MedclfError(
                    f"Cannot tell which column of {source} holds the label; pass --label-column (columns: {listing})."
                )
            label_column = candidates[0]
    if text_columns is not None:
        missing = [c for c in text_columns if c not in columns]
        if missing:
            raise MedclfError(
                f"Text column(s) {', '.join(repr(c) for c in missing)} not in {source}; its columns are: {listing}."
            )
    elif "text" in columns:
        text_columns = ["text"]
    else:
        rest = [c for c in columns if c != label_column and _is_texty(frame[c])]
        if len(rest) != 1:
            raise MedclfError(
                f"Cannot tell which column of {source} holds the text; pass --text-column (columns: {listing})."
            )
        text_columns = rest
    return list(text_columns), label_column


def _is_texty(series: pd.Series) -> bool:
    return series.dtype == object or pd.api.types.is_string_dtype(series)


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def _as_label(value: object) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        value = int(value)
    label = str(value).strip()
    return label or None


def join_texts(frame: pd.DataFrame, text_columns: list[str]) -> list[str | None]:
    """Join the text columns of each row with a newline; None where every part is empty."""
    parts = [[_as_text(v) for v in frame[c].tolist()] for c in text_columns]
    joined: list[str | None] = []
    for row in zip(*parts):
        present = [p for p in row if p is not None]
        joined.append("\n".join(present) if present else None)
    return joined


def load_labeled(
    path: str | None,
    *,
    text_columns: list[str] | None,
    label_column: str | None,
    drop_empty: bool,
    role: str = "data",
) -> LabeledData:
    """Read a labelled table and validate every row. None reads the embedded demo."""
    source = DEMO_NAME if path is None else path
    frame = read_table(str(demo_data_path()) if path is None else path)
    text_columns, label_column = resolve_columns(frame, text_columns, label_column, source=source, need_label=True)
    assert label_column is not None
    texts = join_texts(frame, text_columns)
    labels = [_as_label(v) for v in frame[label_column].tolist()]
    empty_text = [i for i, t in enumerate(texts) if t is None]
    empty_label = [i for i, lab in enumerate(labels) if lab is None]
    bad = sorted(set(empty_text) | set(empty_label))
    if bad and not drop_empty:
        what = []
        if empty_text:
            what.append(f"{len(empty_text)} empty or missing text(s)")
        if empty_label:
            what.append(f"{len(empty_label)} empty or missing label(s)")
        rows = ", ".join(str(i + 1) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise MedclfError(
            f"{source} ({role}) has {' and '.join(what)} (data rows {rows}, counting from 1); fix them or pass --drop-empty to skip them."
        )
    keep = list(range(len(texts)))
    if bad:
        log.warning("Skipped %d row(s) of %s with an empty text or label (--drop-empty).", len(bad), role)
        keep = sorted(set(keep) - set(bad))
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep]
    if not texts:
        raise MedclfError(f"{source} ({role}) has no usable rows after skipping empty ones.")
    return LabeledData(
        texts=[t for t in texts if t is not None],
        labels=[lab for lab in labels if lab is not None],
        source=source,
        text_columns=text_columns,
        label_column=label_column,
        rows=keep,
        n_dropped=len(bad),
    )


def check_classes(labels: list[str], *, source: str) -> list[str]:
    """The sorted label set; at least two classes are needed."""
    counts = Counter(labels)
    if len(counts) < 2:
        only = next(iter(counts)) if counts else "none"
        raise MedclfError(
            f"{source} has only one class ({only!r}); a classifier needs at least 2 classes in the label column."
        )
    return sorted(counts, key=_label_sort_key)


def _label_sort_key(label: str) -> tuple[int, float | str]:
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def stratified_split(
    labels: list[str], *, fraction: float, seed: int, source: str, part: str, option: str
) -> tuple[list[int], list[int]]:
    """Indices (keep, held_out) of a stratified split; clear errors when a class is too small."""
    from sklearn.model_selection import train_test_split

    counts = Counter(labels)
    smallest, n_smallest = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
    if n_smallest < 2:
        raise MedclfError(
            f"Class {smallest!r} has only {n_smallest} row(s) in {source}, too few to stratify the {part} split "
            f"(need at least 2 per class); add rows, remove that class, or pass {option}."
        )
    # ceil(fraction * n) as scikit-learn does, but at least one row per class in each part.
    n_held = max(int(-(-fraction * len(labels) // 1)), len(counts))
    if len(labels) - n_held < len(counts):
        raise MedclfError(
            f"{source} has {len(labels)} rows for {len(counts)} classes, too few for a stratified "
            f"{fraction:.0%} {part} split; add rows or pass {option}."
        )
    indices = list(range(len(labels)))
    try:
        keep, held = train_test_split(indices, test_size=n_held, random_state=seed, stratify=labels)
    except ValueError:
        raise MedclfError(
            f"Class {smallest!r} ({n_smallest} rows) is too small to stratify the {part} split of {source}; "
            f"add rows or pass {option}."
        ) from None
    return list(keep), list(held)
