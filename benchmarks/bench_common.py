"""Helpers shared by the benchmark scripts: split files, scores, peak memory, result files."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "medical-abstracts" / "medical_tc_test.csv"
"""The shared medical-abstracts corpus (see its README for source, license and the split protocol)."""


def data_parser(doc: str | None) -> Any:
    """An argument parser with the options every script on the abstracts shares: --data and its columns."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="labelled table (default: medical abstracts)")
    parser.add_argument("--text-column", default="medical_abstract")
    parser.add_argument("--label-column", default="condition_label")
    return parser


def read_split(path: str | Path) -> tuple[list[str], list[str]]:
    """(texts, labels) of a split file written by compare.py (CSV with columns text, label)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={"label": str}, keep_default_na=False)
    return frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()


def scores(y_true: list[str], y_pred: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y_true, y_pred)), "macro_f1": float(f1_score(y_true, y_pred, average="macro"))}


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def model_source(model: str) -> str:
    """'default' -> the packaged MiniLM directory; anything else as given."""
    if model == "default":
        from medclf.model.modeling import default_model_dir

        return str(default_model_dir())
    return model


def demo_frame(quick: int | None = None) -> Any:
    """The packaged demo snippets (text, specialty); with quick, about that many, every specialty kept."""
    import pandas as pd

    from medclf.core.data import demo_data_path

    frame = pd.read_csv(demo_data_path())
    if quick:
        frame = frame.groupby("specialty", group_keys=False).head(max(2, quick // 6)).reset_index(drop=True)
    return frame


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    print(json.dumps(result, indent=2))
