"""Label descriptions (`--label-descriptions F`): a sentence or a few per class, in the user's words.

F is a table with columns `label` and `description` (CSV, TSV, JSONL or Parquet; several rows per label allowed: their
embeddings are averaged), or a JSON object `{"label": "description"}` / `{"label": ["description", ...]}`. They make
a classifier with no labelled training rows (`--method zero-shot`) and seed the head of the other methods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medclf.core.tables import check_file, read_table
from medclf.errors import MedclfError

Descriptions = dict[str, list[str]]
"""Label -> its descriptions (at least one, none empty), in the order of the file."""


def read_label_descriptions(path: str) -> Descriptions:
    """Read F as above; one sentence for a file that cannot give descriptions."""
    if Path(path).suffix.lower() == ".json":
        return _from_json(path)
    frame = read_table(path)
    missing = [c for c in ("label", "description") if c not in frame.columns]
    if missing:
        raise MedclfError(f"{path} needs the columns label and description (it lacks {', '.join(missing)}); "
                          f"its columns are: {', '.join(map(str, frame.columns))}.")
    out: Descriptions = {}
    for row, (label, text) in enumerate(zip(frame["label"], frame["description"]), start=2):
        out.setdefault(_label(label, path, f"row {row}"), []).append(_text(text, path, f"row {row}"))
    if not out:
        raise MedclfError(f"{path} has no descriptions; add rows of label,description.")
    return out


def check_label_descriptions(descriptions: Descriptions, labels: list[str], *, source: str) -> None:
    """Every class described, and nothing described that is not a class."""
    unknown = sorted(set(descriptions) - set(labels))
    if unknown:
        raise MedclfError(f"{source} describes label(s) {', '.join(map(repr, unknown))} that the data does not have; "
                          f"its labels are: {', '.join(map(repr, labels))}.")
    undescribed = [lab for lab in labels if lab not in descriptions]
    if undescribed:
        raise MedclfError(f"{source} has no description for label(s) {', '.join(map(repr, undescribed))}; add one "
                          "for every class (the class name itself will do).")


def _from_json(path: str) -> Descriptions:
    check_file(path)
    try:
        raw: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedclfError(f"{path} is not valid JSON ({type(exc).__name__}); write "
                          '{"label": "description", ...}.') from None
    if not isinstance(raw, dict) or not raw:
        raise MedclfError(f'{path} must hold a JSON object {{"label": "description" or ["...", ...]}}, not '
                          f"{type(raw).__name__ if raw else 'an empty one'}.")
    out: Descriptions = {}
    for label, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            raise MedclfError(f"{path}: label {label!r} has an empty list of descriptions; give at least one.")
        out[_label(label, path, f"label {label!r}")] = [_text(v, path, f"label {label!r}") for v in values]
    return out


def _label(value: object, path: str, where: str) -> str:
    label = "" if value is None else str(value).strip()
    if not label or label.lower() in ("nan", "none", "null"):
        raise MedclfError(f"{path}, {where}: the label is empty; name the class it describes.")
    return label


def _text(value: object, path: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MedclfError(f"{path}, {where}: the description is empty or not text; write a sentence about the class.")
    return value.strip()
