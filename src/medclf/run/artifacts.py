"""Atomic, self-describing run directories.

Every file is written to a temporary name and renamed into place, and a run
is assembled in a hidden staging directory beside its final path, renamed to
the final name only once complete. A killed run leaves at most a hidden
`.NAME.partial-*` directory, never a half-written run under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medclf.errors import MedclfError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MODEL_DIR = "model"
CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
CONFUSION_FILE = "confusion_matrix.png"
CALIBRATION_FILE = "calibration.png"
TRAINING_FILE = "training.png"
SUBGROUPS_FILE = "subgroups.png"
DEFERRAL_FILE = "deferral.png"
REPORT_HTML_FILE = "report.html"
PREDICTIONS_FILE = "predictions_test.csv"
CALIBRATION_PREDICTIONS_FILE = "predictions_calibration.csv"
"""The calibration part's true labels and calibrated probabilities (no text), on which label sets are calibrated."""
VALIDATION_PREDICTIONS_FILE = "predictions_validation.csv"
"""The same for the validation part, in runs with a calibration part (it places the start of the deferral scan)."""
LOG_FILE = "train.log"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: object) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / MODEL_DIR / "config.json").is_file()


CV_FILE = "cv.json"
"""What `medclf cv` writes beside its fold runs (read by `medclf runs` too)."""
OUTPUT_MARKERS = (CV_FILE, "audit.json", "pretrain_config.json", "export.json", "drift.json")
"""The file that marks a directory written by `medclf cv`, `audit`, `pretrain`, `export` or `drift` (a train run:
is_run_dir)."""


def is_medclf_output(path: str | Path) -> bool:
    """A directory some medclf command wrote: a run, or a cross-validation, audit or pretraining directory."""
    path = Path(path)
    return is_run_dir(path) or any((path / marker).is_file() for marker in OUTPUT_MARKERS)


def check_output_dir(path: str | Path, *, overwrite: bool) -> None:
    """Refuse to write over an existing medclf output or a non-empty folder unless asked to (--overwrite replaces
    only what medclf wrote)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MedclfError(f"Output path {path} is a file; choose a directory path with --output.")
    if path.is_dir() and any(path.iterdir()):
        if not is_medclf_output(path):
            raise MedclfError(
                f"Output directory {path} holds files that are not a medclf run; choose another --output "
                "(--overwrite only replaces an earlier run)."
            )
        if not overwrite:
            raise MedclfError(f"Output directory {path} already holds a run; pass --overwrite or choose another --output.")


def staging_dir(final: str | Path) -> Path:
    """A hidden directory beside `final` (same filesystem, so the final rename is atomic)."""
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))


def publish(staging: Path, final: str | Path, *, overwrite: bool) -> Path:
    """Move a complete run from its staging directory to its final name; the old run is removed only after."""
    final = Path(final).resolve()
    if final.exists():
        check_output_dir(final, overwrite=overwrite)
    return publish_dir(staging, final)


class StagedRun:
    """`with StagedRun(final, overwrite=...) as run:` build the run in `run.path`, a staging folder beside `final`; on
    leaving the block without an error it is renamed into place (`run.final` then names it), on any error removed."""

    def __init__(self, final: str | Path, *, overwrite: bool) -> None:
        self.target = Path(final)
        self.overwrite = overwrite
        self.path = staging_dir(final)
        self._published: Path | None = None

    def __enter__(self) -> StagedRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: object) -> None:
        if kind is None:
            try:
                self._published = publish(self.path, self.target, overwrite=self.overwrite)
                return
            except BaseException:
                shutil.rmtree(self.path, ignore_errors=True)
                raise
        shutil.rmtree(self.path, ignore_errors=True)

    @property
    def final(self) -> Path:
        if self._published is None:
            raise RuntimeError("the run is published only when its `with` block ends without an error")
        return self._published


def publish_dir(staging: Path, final: str | Path) -> Path:
    """Rename a complete directory into place, replacing an existing one only once the new one is there."""
    final = Path(final).resolve()
    old: Path | None = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / "previous")
    try:
        os.replace(staging, final)
    except BaseException:
        if old is not None:
            os.replace(old / "previous", final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_pretrained_atomic(model: Any, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Save model (safetensors) and tokenizer into a temporary folder, then rename it to `directory`."""
    directory = Path(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    from medclf.model.modeling import quiet_transformers

    try:
        with quiet_transformers():
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def file_sha256(path: str | Path | None) -> str | None:
    """A file's SHA-256 (hex), read in 1 MiB blocks; None for no file or standard input ('-')."""
    if path is None or str(path) == "-":
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
