"""Which columns hold the text and the label: as given (checked against the table) or guessed ('text' or the only
text column; 'label' or the only label-like one), and the text of a row joined from several columns."""

from __future__ import annotations

from typing import Any

import pandas as pd

from medclf.errors import MedclfError

LABEL_COLUMN_HINTS = ("label", "class", "category", "target", "specialty", "condition")


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


def join_texts(frame: pd.DataFrame, text_columns: list[str]) -> list[str | None]:
    """Join the text columns of each row with a newline; None where every part is empty."""
    parts = [[_as_text(v) for v in frame[c].tolist()] for c in text_columns]
    joined: list[str | None] = []
    for row in zip(*parts):
        present = [p for p in row if p is not None]
        joined.append("\n".join(present) if present else None)
    return joined
