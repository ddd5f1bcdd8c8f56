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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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


def check_file(path: str) -> None:
    """The path names a non-empty file (one sentence otherwise)."""
    if path != "-":
        p = Path(path)
        if not p.exists():
            raise MedclfError(f"File not found: {path}; check the path.")
        if p.is_dir():
            raise MedclfError(f"{path} is a directory; pass a data file.")
        if p.stat().st_size == 0:
            raise MedclfError(f"{path} is empty; it needs a header row and data rows.")


@contextmanager
def _parse_errors(path: str, fmt: str) -> Iterator[None]:
    """Turn the parsers' exceptions into one sentence that names the file and the fix."""
    try:
        yield
    except MedclfError:
        raise
    except UnicodeDecodeError as exc:
        raise MedclfError(_not_utf8(path, exc.start)) from None
    except pd.errors.EmptyDataError:
        raise MedclfError(f"{path} holds no rows; it needs a header row and data rows.") from None
    except pd.errors.ParserError as exc:
        where = re.search(r"line \d+", str(exc))
        raise MedclfError(
            f"{path} could not be parsed as {fmt.upper()}"
            f"{' (' + where.group(0) + ')' if where else ''}; check its delimiter and quoting."
        ) from None
    except ValueError:
        line = _bad_json_line(path) if fmt == "jsonl" else None
        raise MedclfError(
            f"{path} could not be parsed as {fmt.upper()}"
            + (f" (line {line} is not one complete JSON object)" if line else "")
            + "; check that the file matches its extension."
        ) from None
    except Exception as exc:  # pyarrow and friends raise many types for corrupt files
        if fmt == "parquet":
            raise MedclfError(f"{path} could not be read as Parquet ({type(exc).__name__}); check the file.") from None
        raise


def _not_utf8(path: str, position: int) -> str:
    """Why a file did not decode, with the fix: a binary file, UTF-16, or another 8-bit encoding."""
    head = b""
    if path != "-":
        with open(path, "rb") as handle:
            head = handle.read(4096)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"{path} is UTF-16 text; re-save it as UTF-8, e.g. `iconv -f utf-16 -t utf-8 in.csv > out.csv`."
    controls = sum(b < 9 or 13 < b < 32 for b in head)  # text has next to none; binary formats have many
    if b"\x00" in head or controls > len(head) // 20 or head.startswith((b"\x89PNG", b"%PDF", b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        return f"{path} looks like a binary file (a spreadsheet, archive or image?), not a text table; export it as CSV."
    return (f"{path} is not valid UTF-8 (bad byte at position {position}); re-save it as UTF-8, "
            "e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`.")


def _bad_json_line(path: str) -> int | None:
    """The first line (from 1) of a JSONL file that is not one JSON object; None where every line is."""
    import json

    if path == "-":
        return None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return number
            except ValueError:
                return number
    return None


def _repeated(names: list[str]) -> list[str]:
    return [name for name, n in Counter(names).items() if n > 1]


def _check_header(path: str, fmt: str, source: Any) -> None:
    """Refuse a header that names a column twice: pandas would rename the second ('text.1') and one of them would be
    used without a word."""
    import csv

    if fmt in ("csv", "tsv"):
        if isinstance(source, io.StringIO):
            first = source.getvalue().split("\n", 1)[0]
        else:
            with open(source, encoding="utf-8-sig", newline="") as handle:
                first = handle.readline()
        header = next(csv.reader([first], delimiter="," if fmt == "csv" else "\t"), [])
        repeated = _repeated([h.strip().lstrip("\ufeff") for h in header])
    elif fmt == "jsonl":
        import json

        repeated = []

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            repeated.extend(_repeated([k for k, _ in items]))
            return dict(items)

        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                if number == 1000 or repeated:  # the first thousand records: a hand-made file repeats a key early
                    break
                try:
                    json.loads(line, object_pairs_hook=pairs)
                except ValueError:
                    break  # the parser says where, with its own error
    else:
        return
    _refuse_repeated(path, repeated)


def _refuse_repeated(path: str, repeated: list[str]) -> None:
    if repeated:
        names = ", ".join(f"'{n}'" for n in dict.fromkeys(repeated))
        shown = "The standard input" if path == "-" else path
        raise MedclfError(f"{shown} names the column {names} more than once; rename or remove the repeated column.")


def _csv_options(fmt: str) -> dict[str, Any]:
    return {"sep": "," if fmt == "csv" else "\t", "dtype": str, "keep_default_na": False, "na_values": [""],
            "encoding": "utf-8"}


def read_table(path: str, *, allow_txt: bool = False) -> pd.DataFrame:
    """Read a table by its extension, every column as it is stored (text stays text)."""
    fmt = table_format(path, allow_txt=allow_txt)
    check_file(path)
    with _parse_errors(path, fmt):
        if fmt in ("csv", "tsv"):
            source = io.StringIO(sys.stdin.read()) if path == "-" else path
            _check_header(path, fmt, source)
            frame = pd.read_csv(source, **_csv_options(fmt))
        elif fmt == "jsonl":
            _check_header(path, fmt, path)
            frame = pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            with open(path, encoding="utf-8") as handle:
                lines = [line.rstrip("\r\n") for line in handle]
            frame = pd.DataFrame({"text": lines})
    frame.columns = [str(c) for c in frame.columns]
    _check_columns(frame, path)
    if len(frame) == 0:
        raise MedclfError(f"{path} holds a header but no data rows.")
    return frame


def _check_columns(frame: pd.DataFrame, path: str) -> None:
    _refuse_repeated(path, _repeated(list(frame.columns)))  # Parquet (and Arrow) allow one name on several columns


def iter_table(path: str, *, chunk_rows: int, allow_txt: bool = False) -> Iterator[pd.DataFrame]:
    """The table in frames of at most chunk_rows rows, read as they are needed (memory stays flat however
    large the file): the same parsing, and the same errors, as read_table."""
    fmt = table_format(path, allow_txt=allow_txt)
    check_file(path)
    seen = 0
    with _parse_errors(path, fmt):
        if fmt in ("csv", "tsv"):
            if path == "-":  # the header line read ahead and checked, then the stream as it comes
                first = sys.stdin.readline()
                _check_header(path, fmt, io.StringIO(first))
                source: Any = _Prepended(first, sys.stdin)
            else:
                _check_header(path, fmt, path)
                source = path
            chunks: Iterator[pd.DataFrame] = iter(pd.read_csv(source, chunksize=chunk_rows, **_csv_options(fmt)))
        elif fmt == "jsonl":
            _check_header(path, fmt, path)
            chunks = iter(pd.read_json(path, lines=True, dtype=False, encoding="utf-8", chunksize=chunk_rows))
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            chunks = (batch.to_pandas() for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows))
        else:
            chunks = _text_lines(path, chunk_rows)
        for frame in chunks:
            frame.columns = [str(c) for c in frame.columns]
            _check_columns(frame, path)
            seen += len(frame)
            yield frame
    if seen == 0:
        raise MedclfError(f"{path} holds a header but no data rows.")


class _Prepended:
    """A text stream with a line that was read ahead put back in front (what pandas' reader needs: read(size))."""

    def __init__(self, head: str, rest: Any) -> None:
        self.head, self.rest = head, rest

    def read(self, size: int = -1) -> str:
        if not self.head:
            return self.rest.read(size)
        if size is None or size < 0:
            out, self.head = self.head + self.rest.read(), ""
            return out
        out, self.head = self.head[:size], self.head[size:]
        return out

    def __iter__(self) -> Iterator[str]:
        if self.head:
            yield self.head
            self.head = ""
        yield from self.rest


def _text_lines(path: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    with open(path, encoding="utf-8") as handle:
        lines: list[str] = []
        for line in handle:
            lines.append(line.rstrip("\r\n"))
            if len(lines) == chunk_rows:
                yield pd.DataFrame({"text": lines})
                lines = []
        if lines:
            yield pd.DataFrame({"text": lines})


def count_rows(path: str) -> int | None:
    """Data rows of a file without loading it (for a progress bar's ETA); None where that would cost a read
    of its own (stdin)."""
    fmt = table_format(path, allow_txt=True)
    if path == "-":
        return None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if fmt in ("csv", "tsv"):
        import csv

        with open(path, encoding="utf-8", newline="") as handle:
            return max(0, sum(1 for _ in csv.reader(handle, delimiter="," if fmt == "csv" else "\t")) - 1)
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip() or fmt == "txt")


@dataclass
class LabeledData:
    """Texts and their labels read from one table: a string per text, or (multi-label) a tuple of
    strings per text, possibly empty."""

    texts: list[str]
    labels: list[Any]
    source: str
    text_columns: list[str]
    label_column: str | list[str]
    rows: list[int]
    """0-based data-row index of each kept row in the source table."""
    n_dropped: int = 0
    groups: list[str] | None = None
    """With a group column: each row's group (a patient, a trial); splits never put one group on both sides."""

    def subset(self, indices: list[int]) -> LabeledData:
        return LabeledData(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            source=self.source,
            text_columns=self.text_columns,
            label_column=self.label_column,
            rows=[self.rows[i] for i in indices],
            groups=None if self.groups is None else [self.groups[i] for i in indices],
        )

    def __len__(self) -> int:
        return len(self.texts)


def resolve_columns(
    frame: pd.DataFrame, text_columns: list[str] | None, label_column: str | list[str] | None, *, source: str,
    need_label: bool,
) -> tuple[list[str], Any]:
    """Find the text and label columns, guessing only when there is exactly one candidate.
    label_column may be a list (several 0/1 label columns); the text is never guessed among them."""
    columns = list(frame.columns)
    listing = ", ".join(columns)
    label_set = set(label_column) if isinstance(label_column, list) else {label_column}
    if label_column is not None:
        for name in sorted(str(n) for n in label_set):
            if name not in columns:
                raise MedclfError(f"Label column '{name}' is not in {source}; its columns are: {listing}.")
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
        rest = [c for c in columns if c not in label_set and _is_texty(frame[c])]
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


MISSING_MARKERS = {"nan", "null", "none"}
"""Label cells that programs write for a missing value (pandas' NaN, SQL's NULL, Python's None): counted as missing
labels, never as a class. 'NA' and 'N/A' are not among them: in medical coding they can be a real category."""


def _as_label(value: object) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        value = int(value)
    label = str(value).strip()
    if label.lower() in MISSING_MARKERS:
        return None
    return label or None


def join_texts(frame: pd.DataFrame, text_columns: list[str]) -> list[str | None]:
    """Join the text columns of each row with a newline; None where every part is empty."""
    parts = [[_as_text(v) for v in frame[c].tolist()] for c in text_columns]
    joined: list[str | None] = []
    for row in zip(*parts):
        present = [p for p in row if p is not None]
        joined.append("\n".join(present) if present else None)
    return joined


def row_numbers(indices: list[int], *, offset: int = 0) -> str:
    """Row numbers for a message, counting from 1 (the first five, then '...'): rows, never their text."""
    return ", ".join(str(offset + i + 1) for i in indices[:5]) + (", ..." if len(indices) > 5 else "")


def split_labels(values: list[object], *, sep: str, source: str, column: str) -> list[tuple[str, ...]]:
    """Delimited label cells ('cardiology|urgent') as label tuples; an empty cell is a text with no label."""
    out: list[tuple[str, ...]] = []
    broken: list[int] = []
    for i, value in enumerate(values):
        cell = _as_label(value)
        if cell is None:
            out.append(())
            continue
        parts = [p.strip() for p in cell.split(sep)]
        if any(not p for p in parts):
            broken.append(i)
        out.append(tuple(dict.fromkeys(p for p in parts if p)))
    if broken:
        raise MedclfError(
            f"{source} has {len(broken)} label cell(s) in '{column}' with an empty label between or around the "
            f"separator {sep!r} (data rows {row_numbers(broken)}, counting from 1); remove the stray separators."
        )
    return out


TRUE_VALUES = {"1", "true", "yes", "y", "t"}
FALSE_VALUES = {"0", "false", "no", "n", "f"}


def indicator_labels(frame: pd.DataFrame, columns: list[str], *, source: str) -> tuple[list[tuple[str, ...]], list[int]]:
    """Several 0/1 columns, one per label, as label tuples; and the rows with an empty cell."""
    flags: list[list[bool | None]] = []
    for column in columns:
        parsed: list[bool | None] = []
        bad: list[int] = []
        for i, value in enumerate(frame[column].tolist()):
            cell = _as_label(value)
            if cell is None:
                parsed.append(None)
            elif cell.lower() in TRUE_VALUES:
                parsed.append(True)
            elif cell.lower() in FALSE_VALUES:
                parsed.append(False)
            else:
                parsed.append(None)
                bad.append(i)
        if bad:
            raise MedclfError(
                f"Label column '{column}' of {source} must hold 0 or 1 (or true/false, yes/no), but {len(bad)} "
                f"cell(s) do not (data rows {row_numbers(bad)}, counting from 1); fix them."
            )
        flags.append(parsed)
    labels: list[tuple[str, ...]] = []
    empty: list[int] = []
    for i, row in enumerate(zip(*flags)):
        if any(v is None for v in row):
            empty.append(i)
        labels.append(tuple(c for c, v in zip(columns, row) if v))
    return labels, empty


def load_labeled(
    path: str | None,
    *,
    text_columns: list[str] | None,
    label_column: str | list[str] | None,
    drop_empty: bool,
    role: str = "data",
    multi_label: bool = False,
    label_sep: str = "|",
    group_column: str | None = None,
) -> LabeledData:
    """Read a labelled table and validate every row. None reads the embedded demo.

    multi_label: each row's labels come back as a tuple, from one column of delimited labels
    (`label_sep`; an empty cell is a text with no label) or from several 0/1 columns (a list)."""
    source = DEMO_NAME if path is None else path
    frame = read_table(str(demo_data_path()) if path is None else path)
    if isinstance(label_column, list) and len(label_column) == 1:
        label_column = label_column[0]
    text_columns, label_column = resolve_columns(frame, text_columns, label_column, source=source, need_label=True)
    assert label_column is not None
    texts = join_texts(frame, text_columns)
    labels: list[Any]
    if isinstance(label_column, list):
        labels, empty_label = indicator_labels(frame, label_column, source=source)
    elif multi_label:
        labels, empty_label = split_labels(frame[label_column].tolist(), sep=label_sep, source=source,
                                           column=label_column), []
    else:
        labels = [_as_label(v) for v in frame[label_column].tolist()]
        empty_label = [i for i, lab in enumerate(labels) if lab is None]
    groups: list[str | None] | None = None
    if group_column is not None:
        if group_column not in frame.columns:
            raise MedclfError(f"Group column '{group_column}' is not in {source}; its columns are: "
                              f"{', '.join(frame.columns)}.")
        groups = [_as_label(v) for v in frame[group_column].tolist()]
        missing = [i for i, g in enumerate(groups) if g is None]
        if missing:
            raise MedclfError(f"{source} ({role}) has {len(missing)} row(s) without a group in '{group_column}' (data rows "
                              f"{row_numbers(missing)}, counting from 1); fill them in (a patient or trial id per row).")
    empty_text = [i for i, t in enumerate(texts) if t is None]
    bad = sorted(set(empty_text) | set(empty_label))
    if bad and not drop_empty:
        what = []
        if empty_text:
            what.append(f"{len(empty_text)} empty or missing text(s)")
        if empty_label:
            what.append(f"{len(empty_label)} empty or missing label(s)")
        raise MedclfError(
            f"{source} ({role}) has {' and '.join(what)} (data rows {row_numbers(bad)}, counting from 1); fix them or pass --drop-empty to skip them."
        )
    keep = list(range(len(texts)))
    if bad:
        log.warning("Skipped %d row(s) of %s with an empty text or label (--drop-empty).", len(bad), role)
        keep = sorted(set(keep) - set(bad))
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep]
        groups = None if groups is None else [groups[i] for i in keep]
    if not texts:
        raise MedclfError(f"{source} ({role}) has no usable rows after skipping empty ones.")
    return LabeledData(
        texts=[t for t in texts if t is not None],
        labels=labels,
        source=source,
        text_columns=text_columns,
        label_column=label_column,
        rows=keep,
        n_dropped=len(bad),
        groups=None if groups is None else [g for g in groups if g is not None],
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


LIKELY_SEPARATORS = ("|", ";", ",", "/", "+")


def check_label_sets(
    label_sets: list[tuple[str, ...]], *, source: str, declared: list[str] | None = None, sep: str | None = None
) -> list[str]:
    """The label names of a multi-label table (the 0/1 columns' order, else sorted), checked so that each
    label can be learned: at least two labels, each on some rows but not on every row, and (delimited
    labels) a separator that splits at least one row."""
    counts = Counter(lab for present in label_sets for lab in present)
    names = list(declared) if declared is not None else sorted(counts, key=_label_sort_key)
    never = [name for name in names if counts[name] == 0]
    if never:
        raise MedclfError(f"Label(s) {', '.join(map(repr, never))} never occur in {source}; remove the column(s) "
                          "or add rows that carry them.")
    always = [name for name in names if counts[name] == len(label_sets)]
    if always:
        raise MedclfError(f"Label(s) {', '.join(map(repr, always))} are on every row of {source}, so there is nothing "
                          "to learn about them; remove them from the labels.")
    if sep is not None and label_sets and max(len(present) for present in label_sets) <= 1:
        other = [s for s in LIKELY_SEPARATORS if s != sep and any(s in name for name in names)]
        hint = (f"labels such as {next(n for n in names if other[0] in n)!r} contain {other[0]!r}: pass --label-sep "
                f"'{other[0]}'" if other else "pass the separator the file uses with --label-sep, or train without "
                "--multi-label")
        raise MedclfError(f"No row of {source} has more than one label when split on {sep!r}; {hint}.")
    if len(names) < 2:
        raise MedclfError(f"{source} has only one label ({names[0]!r}); multi-label needs at least 2 labels "
                          "(for one yes/no label, train without --multi-label on a yes/no column).")
    return names


def _label_sort_key(label: str) -> tuple[int, float | str]:
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def stratified_split(
    labels: list[Any], *, fraction: float, seed: int, source: str, part: str, option: str,
    groups: list[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Indices (keep, held_out) of a stratified split; clear errors when a class is too small.
    Label tuples (multi-label) are split by iterative stratification; with `groups`, no group lands on
    both sides (the held-out part is one fold of about `fraction` of the groups)."""
    from sklearn.model_selection import train_test_split

    if groups is not None:
        n_splits = max(2, min(round(1 / fraction), len(set(groups))))
        folds = kfold_indices(labels, folds=n_splits, seed=seed, groups=groups, source=source)
        keep, held = folds[0]
        return keep, held
    if labels and isinstance(labels[0], tuple):
        return _multilabel_split(labels, fraction=fraction, seed=seed, source=source, part=part, option=option)
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


def _multilabel_split(
    labels: list[tuple[str, ...]], *, fraction: float, seed: int, source: str, part: str, option: str
) -> tuple[list[int], list[int]]:
    """Iterative stratification (Sechidis et al. 2011; Szymanski & Kajdanowicz 2017): every label keeps about
    its share of rows in both parts, rare labels first, where a plain random split can leave one side without them."""
    import numpy as np
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    names = sorted({lab for present in labels for lab in present})
    n_held = int(-(-fraction * len(labels) // 1))
    if n_held < 1 or len(labels) - n_held < 2:
        raise MedclfError(f"{source} has {len(labels)} rows, too few for a {fraction:.0%} {part} split; add rows or "
                          f"pass {option}.")
    index = {lab: j for j, lab in enumerate(names)}
    y = np.zeros((len(labels), len(names)), dtype=int)
    for row, present in enumerate(labels):
        y[row, [index[lab] for lab in present]] = 1
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_held, random_state=seed)
    keep, held = next(splitter.split(np.zeros(len(labels)), y))
    return sorted(int(i) for i in keep), sorted(int(i) for i in held)


def kfold_indices(
    labels: list[Any], *, folds: int, seed: int, groups: list[str] | None = None, source: str = "the data",
) -> list[tuple[list[int], list[int]]]:
    """(rest, held-out fold) index pairs of a k-fold split: stratified by class (StratifiedKFold), by label
    (multi-label: iterative stratification), and with `groups` never splitting a group (StratifiedGroupKFold;
    multi-label: GroupKFold). Shuffled with the seed."""
    import warnings

    import numpy as np
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold

    n = len(labels)
    if not isinstance(folds, int) or folds < 2:
        raise MedclfError(f"--folds must be a whole number of at least 2, got {folds!r}.")
    if folds > n:
        raise MedclfError(f"{source} has {n} rows, fewer than {folds} folds; pass a smaller --folds.")
    multi = bool(labels) and isinstance(labels[0], tuple)
    if groups is not None:
        n_groups = len(set(groups))
        if n_groups < folds:
            raise MedclfError(f"{source} has {n_groups} groups, fewer than {folds} folds; pass a smaller --folds "
                              "(or split by another group column).")
    if multi:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        names = sorted({lab for present in labels for lab in present})
        y = np.array([[lab in present for lab in names] for present in labels], dtype=int)
        splitter = (GroupKFold(n_splits=folds) if groups is not None
                    else MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    else:
        counts = Counter(labels)
        smallest, n_smallest = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
        if n_smallest < folds and groups is None:
            raise MedclfError(f"Class {smallest!r} has only {n_smallest} row(s) in {source}, fewer than {folds} folds; "
                              "add rows, remove that class, or pass a smaller --folds.")
        y = np.asarray(labels)
        splitter = (StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed) if groups is not None
                    else StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has fewer members than n_splits"
        pairs = list(splitter.split(np.zeros(n), y, groups))
    return [(sorted(int(i) for i in rest), sorted(int(i) for i in held)) for rest, held in pairs]
