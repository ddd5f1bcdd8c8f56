"""`medclf suggest`: which unlabelled texts an expert should label next, for a trained run.

The run's calibrated probabilities give each pool text an uncertainty (core.selection: margin or entropy);
`diverse` also spreads the picks over the run's encoder space (TextClassifier.embed), so that a batch of labels is
not spent on near-duplicates. The output names rows (0-based rows of the pool file), never texts unless asked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medclf.config import LoadOptions
from medclf.core.selection import STRATEGIES, rank
from medclf.errors import MedclfError
from medclf.inference.classifier import TextClassifier
from medclf.inference.files import output_format, read_inputs
from medclf.run.artifacts import atomic_write_text

log = logging.getLogger(__name__)
SUGGEST_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Suggestions:
    frame: pd.DataFrame
    """rank, row, uncertainty, predicted label (multi-label: labels joined), id columns, text when asked."""
    pool_size: int
    strategy: str


def suggest(run: str | Path, *, pool: str, n: int = 100, strategy: str = "margin", text_columns: list[str] | None = None,
            id_columns: list[str] | None = None, keep_text: bool = False, seed: int = 0, drop_empty: bool = False,
            options: LoadOptions | None = None, output: str | None = None) -> Suggestions:
    """Rank the pool's texts for annotation and return (and with `output`, write) the top n."""
    if strategy not in STRATEGIES:
        raise MedclfError(f"Unknown --strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
    fmt = output_format(output, SUGGEST_FORMATS) if output is not None else None
    clf = TextClassifier.load(run, options)
    frame, texts, _ = read_inputs(pool, None, text_columns=text_columns,
                                  default_columns=clf.spec.text_columns if clf.spec else None, drop_empty=drop_empty)
    missing = [c for c in id_columns or [] if c not in frame.columns]
    if missing:
        raise MedclfError(f"--id-column {missing[0]!r} is not a column of {pool}.")
    probs = clf.predict_proba(texts)
    thresholds = None if clf.thresholds is None else np.array(list(clf.thresholds.values()))
    embeddings = clf.embed(texts) if strategy == "diverse" else None
    ranking = rank(probs, n=n, strategy=strategy, multi_label=clf.multi_label, thresholds=thresholds,
                   embeddings=embeddings, seed=seed)
    decided = clf.decide(probs[ranking.order])
    out = pd.DataFrame({"rank": np.arange(1, len(ranking.order) + 1),
                        "row": frame["row"].to_numpy()[ranking.order],
                        "uncertainty": ranking.uncertainty})
    for column in id_columns or []:
        out[column] = frame[column].to_numpy()[ranking.order]
    sep = clf.spec.label_sep if clf.spec else "|"
    out["predicted"] = [sep.join(d) if isinstance(d, list) else d for d in decided]
    if keep_text:
        out["text"] = [texts[i] for i in ranking.order]
    if output is not None:
        _write(out, output, fmt or "csv")
    log.info("Suggested %d of %d pool texts to label next (%s).", len(out), len(texts), strategy)
    return Suggestions(frame=out, pool_size=len(texts), strategy=strategy)


def _write(frame: pd.DataFrame, output: str, fmt: str) -> None:
    path = Path(output)
    if fmt == "csv":
        atomic_write_text(path, frame.to_csv(index=False, float_format="%.6f"))
    elif fmt == "jsonl":
        atomic_write_text(path, frame.to_json(orient="records", lines=True, force_ascii=False))
    else:
        tmp = path.with_name(path.name + ".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
