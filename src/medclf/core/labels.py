"""Labelled tables: the rows' texts, labels (one per row, several delimited in one column, or 0/1 columns) and groups,
read and validated where they enter (`load_labeled`), and the checks on the classes and label sets found."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from medclf.core.columns import join_texts, resolve_columns
from medclf.core.figures import Label
from medclf.core.tables import DEMO_NAME, demo_data_path, read_table, row_numbers
from medclf.errors import MedclfError

log = logging.getLogger(__name__)


@dataclass
class LabeledData:
    """Texts and their labels read from one table: a string per text, or (multi-label) a tuple of
    strings per text, possibly empty."""

    texts: list[str]
    labels: list[Label]
    source: str
    text_columns: list[str]
    label_column: str | list[str]
    rows: list[int]
    """0-based data-row index of each kept row in the source table."""
    n_dropped: int = 0
    groups: list[str] | None = None
    """With a group column: each row's group (a patient, a trial); splits never put one group on both sides."""
    slices: dict[str, list[str]] | None = None
    """With slice columns: each row's value in each (site, sex, age band; core/subgroups.py reports by them),
    a missing cell as MISSING."""

    def subset(self, indices: list[int]) -> LabeledData:
        return LabeledData(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            source=self.source,
            text_columns=self.text_columns,
            label_column=self.label_column,
            rows=[self.rows[i] for i in indices],
            groups=None if self.groups is None else [self.groups[i] for i in indices],
            slices=None if self.slices is None else {c: [v[i] for i in indices] for c, v in self.slices.items()},
        )

    def __len__(self) -> int:
        return len(self.texts)


MISSING = "(missing)"
"""A slice column's value where the cell is empty (a subgroup of its own: core/subgroups.py)."""

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


def label_values(frame: pd.DataFrame, label_column: str | list[str], *, multi_label: bool, label_sep: str,
                 source: str) -> tuple[list[Label | None], list[int]]:
    """Each row's label as the table gives it (a name; multi-label a tuple, from delimited cells or 0/1 columns),
    validated, and the rows whose label is missing (None there)."""
    if isinstance(label_column, list):
        found, empty = indicator_labels(frame, label_column, source=source)
        return list(found), empty
    if multi_label:
        return list(split_labels(frame[label_column].tolist(), sep=label_sep, source=source, column=label_column)), []
    labels: list[Label | None] = [_as_label(v) for v in frame[label_column].tolist()]
    return labels, [i for i, lab in enumerate(labels) if lab is None]


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
    slice_columns: list[str] | None = None,
) -> LabeledData:
    """Read a labelled table and validate every row. None reads the embedded demo.
    slice_columns: columns to report subgroups by (read_slices), kept beside each row.

    multi_label: each row's labels come back as a tuple, from one column of delimited labels
    (`label_sep`; an empty cell is a text with no label) or from several 0/1 columns (a list)."""
    source = DEMO_NAME if path is None else path
    frame = read_table(str(demo_data_path()) if path is None else path)
    if isinstance(label_column, list) and len(label_column) == 1:
        label_column = label_column[0]
    text_columns, label_column = resolve_columns(frame, text_columns, label_column, source=source, need_label=True)
    assert label_column is not None
    texts = join_texts(frame, text_columns)
    labels, empty_label = label_values(frame, label_column, multi_label=multi_label, label_sep=label_sep, source=source)
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
    slices = read_slices(frame, slice_columns, text_columns=text_columns, label_column=label_column, source=source)
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
        slices = None if slices is None else {c: [v[i] for i in keep] for c, v in slices.items()}
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
        groups=None if groups is None else [g for g in groups if g is not None],
        slices=slices,
    )


def read_slices(frame: pd.DataFrame, slice_columns: list[str] | None, *, text_columns: list[str],
                label_column: str | list[str], source: str) -> dict[str, list[str]] | None:
    """Each row's value in each slice column, as a string (a missing cell: MISSING). A column that is not
    in the table, is a text or label column, or holds no value at all is refused with the fix."""
    if not slice_columns:
        return None
    labels = set(label_column) if isinstance(label_column, list) else {label_column}
    out: dict[str, list[str]] = {}
    for column in slice_columns:
        if column not in frame.columns:
            raise MedclfError(f"Slice column '{column}' is not in {source}; its columns are: {', '.join(frame.columns)}.")
        if column in text_columns or column in labels:
            raise MedclfError(f"Slice column '{column}' is a text or label column of {source}; slice by a column that "
                              "names a group of rows (site, sex, age band, note type).")
        values = [_as_label(v) for v in frame[column].tolist()]
        if all(v is None for v in values):
            raise MedclfError(f"Slice column '{column}' of {source} is empty; fill it in or leave it out of "
                              "--slice-columns.")
        out[column] = [MISSING if v is None else v for v in values]
    return out


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
