"""Shared fixtures: a tiny random-init BERT built offline in a temp dir, and small invented tables."""

from __future__ import annotations

import csv
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECRET = "ZEBRA-PATIENT-7731"
"""A marker planted in test texts: it must never appear in any message, log or artifact."""

WORDS = {
    "cardio": ["chest", "pain", "troponin", "ecg", "murmur", "palpitations", "heart", "arrhythmia"],
    "derm": ["rash", "itchy", "plaques", "mole", "skin", "eczema", "lesion", "biopsy"],
    "neuro": ["seizure", "headache", "stroke", "numbness", "tremor", "weakness", "mri", "speech"],
}


def make_rows(n_per_class: int, seed: int = 0, labels: tuple[str, ...] = ("cardio", "derm", "neuro")) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label in labels:
        for i in range(n_per_class):
            words = rng.sample(WORDS[label], 4) + rng.sample([w for k in WORDS for w in WORDS[k]], 1)
            rows.append({"note_id": f"{label}-{i}", "text": f"patient {SECRET} " + " ".join(words), "label": label})
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], *, delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def build_tiny_bert(path: Path, *, max_positions: int = 512) -> str:
    """A 2-layer, 32-wide BERT with random weights and the packaged MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from medclf.modeling import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=max_positions,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_model_512(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same with 512 positions, for recipes that pad every text to 512 (the tutorial's)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-512"), max_positions=512)


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 rows, 3 classes, with an extra id column."""
    return write_csv(tmp_path_factory.mktemp("data") / "notes.csv", make_rows(20))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, small_csv: Path) -> Path:
    """One run of the tiny model on small_csv, shared by the read-only tests."""
    from medclf import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(out), epochs=8, lr=3e-3, batch_size=8), progress=False)
    return out


@pytest.fixture(scope="session")
def embedding_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, small_csv: Path) -> Path:
    """A `--method embeddings` run of the tiny model, trained through the CLI."""
    from typer.testing import CliRunner

    from medclf.cli import app

    out = tmp_path_factory.mktemp("emb") / "run"
    result = CliRunner().invoke(app, ["train", "--method", "embeddings", "--data", str(small_csv), "--model", tiny_model,
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "accuracy" in result.stdout
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Poll /readyz of a `medclf serve` subprocess until it answers 200."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")
