"""A run's drift reference (RUN/reference/): what `medclf drift` compares new texts with, kept without any text.

reference.safetensors holds two arrays of the reference part (the run's validation part, or a table given to
`medclf reference`): `embeddings` (texts x hidden size, fp32: each text's vector in the run's encoder space, by the
one function TextClassifier.embed uses) and `probabilities` (texts x labels, the run's calibrated probabilities).
reference.json says what they are: the part, how many rows, the labels, the training class shares, the quartiles
of the reference texts' lengths in words, the precision each array was computed at, and the SHA-256 of the model
weights they came from (a reference from another model is refused). Embeddings are derived from patient text:
`train --no-reference` writes none, and `medclf export` never copies it. Plain safetensors and JSON: numpy,
PyTorch or any safetensors reader opens them; nothing is pickled.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medclf.errors import MedclfError
from medclf.run.artifacts import MODEL_DIR, atomic_write_json, file_sha256, read_json

REFERENCE_DIR = "reference"
REFERENCE_ARRAYS = "reference.safetensors"
REFERENCE_INFO = "reference.json"
REFERENCE_VERSION = 1
EMBEDDING_PRECISION = "fp32"
"""Both sides of the covariate test are embedded at this precision (so the machine's kind never moves them)."""


@dataclass(frozen=True)
class ReferenceInfo:
    part: str
    """Which rows: 'validation part' (written by train), or the table `medclf reference` was given (its file name)."""
    n: int
    labels: list[str]
    multi_label: bool
    train_shares: dict[str, float]
    """The shares the run's probabilities were learnt under (prior_shares): the training part's class shares
    (multi-label: each label's share of texts holding it); with --class-weights balanced, the even shares the
    weighted loss learns under."""
    length_quartiles: list[float]
    """The 25th, 50th and 75th percentiles of the reference texts' lengths in words (the length slices of drift)."""
    embedding_precision: str
    probability_precision: str
    model_sha256: str | None
    version: int = REFERENCE_VERSION


@dataclass(frozen=True)
class Reference:
    info: ReferenceInfo
    embeddings: np.ndarray
    probabilities: np.ndarray


def model_fingerprint(run_dir: str | Path) -> str | None:
    """The SHA-256 of the run's model weights (model/model.safetensors), which a reference must come from."""
    path = Path(run_dir) / MODEL_DIR / "model.safetensors"
    return file_sha256(path) if path.is_file() else None


def prior_shares(counts: dict[str, int], n_train: int, labels: list[str], *, multi_label: bool,
                 class_weights: str) -> dict[str, float]:
    """The class shares a run's calibrated probabilities assume: the training part's, or with --class-weights
    balanced the even ones its weighted loss learns under (1 / K, or one half per label); temperature scaling fits
    one scalar and does not move them."""
    if class_weights == "balanced":
        return {lab: 0.5 if multi_label else 1.0 / len(labels) for lab in labels}
    return {lab: counts.get(lab, 0) / max(1, n_train) for lab in labels}


def length_quartiles(texts: list[str]) -> list[float]:
    words = np.array([len(t.split()) for t in texts], dtype=float)
    return [float(q) for q in np.quantile(words, [0.25, 0.5, 0.75])] if len(words) else [0.0, 0.0, 0.0]


def write_reference(run_dir: str | Path, reference: Reference) -> Path:
    """Write RUN/reference/ (replacing an earlier one only once the new one is complete)."""
    from safetensors.numpy import save_file

    final = Path(run_dir) / REFERENCE_DIR
    staging = Path(tempfile.mkdtemp(prefix=f".{REFERENCE_DIR}.partial-", dir=Path(run_dir)))
    try:
        save_file({"embeddings": np.ascontiguousarray(reference.embeddings, dtype=np.float32),
                   "probabilities": np.ascontiguousarray(reference.probabilities, dtype=np.float32)},
                  str(staging / REFERENCE_ARRAYS))
        atomic_write_json(staging / REFERENCE_INFO, asdict(reference.info))
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{REFERENCE_DIR}.old-", dir=Path(run_dir)))
            os.replace(final, old / "previous")
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def read_reference(run_dir: str | Path) -> Reference | None:
    """The run's reference, checked against its model; None where the run has none."""
    from safetensors.numpy import load_file

    folder = Path(run_dir) / REFERENCE_DIR
    if not (folder / REFERENCE_INFO).is_file() or not (folder / REFERENCE_ARRAYS).is_file():
        return None
    raw = read_json(folder / REFERENCE_INFO)
    if not isinstance(raw, dict) or raw.get("version", 0) > REFERENCE_VERSION:
        raise MedclfError(f"{folder} was written by a newer medclf; upgrade medclf, or add a new one with "
                          f"`medclf reference {run_dir} --data TABLE`.")
    try:
        info = ReferenceInfo(**{k: raw[k] for k in ReferenceInfo.__dataclass_fields__ if k in raw})
    except TypeError:
        raise MedclfError(f"{folder / REFERENCE_INFO} is damaged; add a new reference with "
                          f"`medclf reference {run_dir} --data TABLE`.") from None
    if info.embedding_precision != EMBEDDING_PRECISION or info.probability_precision != EMBEDDING_PRECISION:
        raise MedclfError(f"The run's drift reference was computed in {info.embedding_precision} / "
                          f"{info.probability_precision}, not {EMBEDDING_PRECISION} (as drift computes the new data); "
                          f"add a new one with `medclf reference {run_dir} --data TABLE`.")
    current = model_fingerprint(run_dir)
    if info.model_sha256 is not None and current is not None and info.model_sha256 != current:
        raise MedclfError(f"The run's drift reference came from another model than {Path(run_dir) / MODEL_DIR} (its "
                          f"weights' SHA-256 differs); add a new one with `medclf reference {run_dir} --data TABLE`.")
    arrays = load_file(str(folder / REFERENCE_ARRAYS))
    embeddings, probabilities = arrays.get("embeddings"), arrays.get("probabilities")
    if embeddings is None or probabilities is None or len(embeddings) != info.n or len(probabilities) != info.n \
            or probabilities.shape[1] != len(info.labels):
        raise MedclfError(f"{folder / REFERENCE_ARRAYS} does not match {REFERENCE_INFO}; add a new reference with "
                          f"`medclf reference {run_dir} --data TABLE`.")
    return Reference(info=info, embeddings=embeddings, probabilities=probabilities)


PRIORS_FILE = "priors.json"
PRIORS_KIND = "medclf priors"


@dataclass(frozen=True)
class Priors:
    """Class shares for `predict --priors` (written by `medclf drift`): Bayes' correction moves the run's calibrated
    probabilities from the training shares to these."""

    labels: list[str]
    multi_label: bool
    train: list[float]
    shares: list[float]
    source: str
    """Where they were estimated: the drift command's data file name and its row count."""
    method: str
    model_sha256: str | None = None
    """The weights of the run they were estimated with (a run with other weights refuses them)."""


def write_priors(path: str | Path, priors: Priors) -> None:
    atomic_write_json(path, {"kind": PRIORS_KIND, **asdict(priors)})


def read_priors(path: str | Path, *, labels: list[str], multi_label: bool, model_sha256: str | None = None) -> Priors:
    """A priors file, checked against the run that will apply it (its labels, its task, its weights)."""
    path = Path(path)
    if not path.is_file():
        raise MedclfError(f"Priors file {path} does not exist; write one with `medclf drift RUN --data NEW.csv` "
                          "(it leaves priors.json in its --output folder).")
    try:
        raw = read_json(path)
    except ValueError:
        raw = None
    if not isinstance(raw, dict) or raw.get("kind") != PRIORS_KIND:
        raise MedclfError(f"{path} is not a priors file of `medclf drift` (its priors.json); pass that file.")
    try:
        priors = Priors(**{k: raw[k] for k in Priors.__dataclass_fields__ if k in raw})
    except (KeyError, TypeError):
        raise MedclfError(f"{path} is damaged; run `medclf drift` again to write it.") from None
    if priors.labels != labels or priors.multi_label != multi_label:
        raise MedclfError(f"{path} holds shares for the labels {', '.join(priors.labels)}, not this run's "
                          f"({', '.join(labels)}); pass the priors `medclf drift` wrote for this run.")
    if priors.model_sha256 is not None and model_sha256 is not None and priors.model_sha256 != model_sha256:
        raise MedclfError(f"{path} was estimated with another model than this run's (its weights' SHA-256 differs); "
                          "run `medclf drift` with this run to write its priors.")
    values = np.array(priors.train + priors.shares, dtype=float)
    if len(priors.train) != len(labels) or len(priors.shares) != len(labels) or not np.isfinite(values).all() \
            or (values <= 0).any() or (values >= 1).any() \
            or (not multi_label and (abs(sum(priors.train) - 1) > 1e-3 or abs(sum(priors.shares) - 1) > 1e-3)):
        raise MedclfError(f"{path} holds shares outside (0, 1), of the wrong length, or (single-label) not summing to "
                          "1; run `medclf drift` again.")
    return priors
