"""Faults of the environment: a full disk, a read-only or unwritable folder, an input that vanished. Every command
that writes says so in one sentence naming the path and the fix, exits 2, prints no traceback, and leaves nothing
half-written. Real small and read-only tmpfs mounts where this machine allows mounting (root with the capability),
patched errors everywhere (CI runs as root, so a chmod'ed folder would not refuse a write there)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.errors import ENVIRONMENT_FIXES, MedclfError, environment_error

runner = CliRunner()


class SafetensorError(Exception):
    """The name and message safetensors' native writer raises when the disk fills (its class is built in Rust)."""


FULL_SAFETENSORS = SafetensorError(
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')


# ---------------------------------------------------------------- the translation


@pytest.mark.parametrize("code", sorted(ENVIRONMENT_FIXES))
def test_every_os_fault_is_one_sentence_naming_the_path(code: int) -> None:
    fault = environment_error(OSError(code, os.strerror(code), "/data/notes.csv"))
    assert isinstance(fault, MedclfError)
    text = str(fault)
    assert "/data/notes.csv" in text and text.endswith(".") and "\n" not in text
    assert text[0].isupper() and text.count("; ") >= 1  # what happened; what to do


def test_native_writer_errors_and_chains_are_recognised() -> None:
    assert "no space left" in str(environment_error(FULL_SAFETENSORS, path="runs/a")).lower()
    assert "runs/a" in str(environment_error(FULL_SAFETENSORS, path="runs/a"))
    wrapped = RuntimeError("saving the model failed")
    wrapped.__cause__ = OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run")
    assert "read-only" in str(environment_error(wrapped))
    assert environment_error(ValueError("a bug")) is None
    assert environment_error(RuntimeError("CUDA error code: 2")) is None  # an error code that is not an OS error


def test_a_staging_file_is_named_by_the_output_it_was_becoming(tmp_path: Path) -> None:
    staged = tmp_path / ".run.partial-x1y2" / "model" / "model.safetensors"
    text = str(environment_error(OSError(errno.ENOSPC, "No space left on device", str(staged)), path="runs/mine"))
    assert "runs/mine" in text and "partial" not in text


# ---------------------------------------------------------------- every command that writes, with a patched fault

FAULTS = {
    "disk full (safetensors)": (FULL_SAFETENSORS, "no space left"),
    "read-only": (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out"), "read-only"),
    "no permission": (PermissionError(errno.EACCES, "Permission denied", "/mnt/locked/out"), "permission"),
    "input vanished": (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/gone.csv"), "no longer there"),
}

COMMANDS = {  # command line -> the library function it calls (patched to fail as the environment would)
    "train": (["train", "--output", "OUT"], "medclf.training.pipeline.train"),
    "demo": (["demo", "--output", "OUT"], "medclf.training.pipeline.train"),
    "cv": (["cv", "--output", "OUT"], "medclf.training.cv.cross_validate"),
    "audit": (["audit", "--output", "OUT"], "medclf.training.audit.audit"),
    "pretrain": (["pretrain", "--data", "DATA", "--output", "OUT"], "medclf.training.pretrain.pretrain"),
    "predict": (["predict", "RUN", "--input", "DATA", "--output", "OUT"], "medclf.inference.files.predict_file"),
    "evaluate": (["evaluate", "RUN", "--data", "DATA", "--output", "OUT"], "medclf.inference.evaluation.evaluate"),
    "explain": (["explain", "RUN", "--input", "DATA", "--output", "OUT"], "medclf.inference.files.explain_file"),
    "suggest": (["suggest", "RUN", "--pool", "DATA", "--output", "OUT"], "medclf.inference.suggest.suggest"),
    "export": (["export", "RUN", "--output", "OUT"], "medclf.export.onnx.export_onnx"),
    "card": (["card", "RUN", "--output", "OUT"], "medclf.reporting.card.write_card"),
    "runs": (["runs", "RUN", "--output", "OUT"], "medclf.reporting.runs.find_runs"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_writing_command_gives_one_sentence_and_exit_2(command: str, fault: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    args, target = COMMANDS[command]
    error, words = FAULTS[fault]

    def failing(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr(target, failing)
    if command == "card":  # card writes with --output only after reading the run: fail at the write itself
        monkeypatch.setattr("medclf.run.artifacts.is_run_dir", lambda _path: True)
        monkeypatch.setattr("medclf.run.runspec.RunSpec.read", staticmethod(lambda _path: None))
        monkeypatch.setattr("medclf.run.artifacts.read_json", lambda _path: {})
        monkeypatch.setattr("medclf.reporting.card.model_card", lambda *_a, **_k: "card")
        monkeypatch.setattr("medclf.run.artifacts.atomic_write_text", failing)
    out = str(tmp_path / "out")
    line = [{"OUT": out, "RUN": str(tmp_path), "DATA": str(tmp_path / "in.csv")}.get(a, a) for a in args]
    result = runner.invoke(app, line)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("Error: ") and "\n" not in message and "Traceback" not in message
    assert words in message.lower()
    named = error.filename if isinstance(error, OSError) else out  # the fault's own path, else the command's output
    assert named in message


# ---------------------------------------------------------------- the real thing: small and read-only file systems


def _mounted(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs at `where` for one test (skipped where this machine does not let the test mount one)."""
    where.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN; the patched-fault tests above cover the messages")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system: the tiny model's weights (4 MB) do not fit."""
    yield from _mounted(tmp_path / "small", "size=1m")


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _mounted(tmp_path / "ro", "ro,size=1m")


def _medclf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medclf", *args], capture_output=True, text=True, timeout=300)


def test_train_on_a_full_disk_says_so_and_leaves_nothing(small_disk: Path, tiny_model: str, small_csv: Path) -> None:
    out = small_disk / "run"
    done = _medclf("train", "--data", str(small_csv), "--model", tiny_model, "--output", str(out), "--epochs", "1",
                   "--few-shot", "off", "--no-calibrate")
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: There is no space left on the disk that holds") and str(out) in last
    assert "Traceback" not in done.stderr and "SafetensorError" not in done.stderr
    assert list(small_disk.iterdir()) == []  # nothing half-written: the staging folder went with the error


def test_predict_into_a_read_only_folder_says_so(read_only_disk: Path, trained_run: Path, small_csv: Path) -> None:
    out = read_only_disk / "predictions.csv"
    done = _medclf("predict", str(trained_run), "--input", str(small_csv), "--output", str(out))
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "read-only file system" in last and str(read_only_disk) in last and "Traceback" not in done.stderr
