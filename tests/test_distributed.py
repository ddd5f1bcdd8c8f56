"""Training on two CPU processes (DDP over gloo, started by `medclf train --num-processes 2`, i.e. torchrun):
one run directory, written once, with the figures of a one-process run of the same effective batch."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from medclf import TrainConfig, train

COMMON = dict(epochs=3, lr=1e-3, precision="fp32", max_length=32, few_shot="off")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, small_csv):
    root = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "medclf", "-q", "train", "--data", str(small_csv), "--model", tiny_model,
           "--output", str(root / "two"), "--batch-size", "4", "--num-processes", "2", "--epochs", "3", "--lr", "1e-3",
           "--precision", "fp32", "--max-length", "32", "--few-shot", "off"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Run written to") == 1  # the main process reports, once
    one = train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(root / "one"), batch_size=8, **COMMON),
                progress=False)
    return root, json.loads((root / "two" / "metrics.json").read_text()), one.metrics


def test_two_processes_write_one_run_and_say_how_they_split_the_batch(runs):
    root, two, _ = runs
    assert sorted(p.name for p in root.iterdir()) == ["one", "two"]  # no leftover staging folders
    info = json.loads((root / "two" / "train_config.json").read_text())["run"]["processes"]
    assert info == {"count": 2, "per_process_batch": 4, "grad_accum": 1, "effective_batch": 8,
                    "lr_scaling": "none: --lr is used as given for the effective batch"}
    log = (root / "two" / "train.log").read_text()
    assert log.count("Data:") == 1 and "Distributed: 2 processes" in log and "Effective batch size 8" in log


def test_gathered_evaluation_covers_every_text_once(runs, small_csv):
    root, two, _ = runs
    predictions = pd.read_csv(root / "two" / "predictions_test.csv")
    assert predictions["row"].is_unique and len(predictions) == two["test"]["n"] == 12
    assert two["data"]["n_val"] == 5  # an odd count: 3 texts on one process, 2 on the other


def test_figures_match_a_one_process_run_of_the_same_effective_batch(runs):
    _, two, one = runs
    assert two["timing"]["optimizer_steps"] == one["timing"]["optimizer_steps"] == 18
    # the same global batches and starting weights; only dropout draws and float summation order differ
    for a, b in zip(two["history"], one["history"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=0.01)
    assert two["test"]["loss"] == pytest.approx(one["test"]["loss"], abs=0.01)
    assert abs(two["test"]["accuracy"] - one["test"]["accuracy"]) <= 0.1


def test_distributed_training_needs_nothing_beyond_the_plain_install():
    """`medclf train --num-processes N` and the torchrun / accelerate launch path import accelerate: a runtime need."""
    import importlib.metadata

    plain = [r for r in importlib.metadata.requires("medclf") or [] if "extra ==" not in r]
    assert any(r.replace(" ", "").startswith("accelerate") for r in plain), plain


def test_pretraining_on_two_processes_writes_one_checkpoint(tmp_path, tiny_model, small_csv):
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "pre"
    cmd = [sys.executable, "-m", "medclf", "-q", "pretrain", "--data", str(small_csv), "--text-column", "text",
           "--model", tiny_model, "--output", str(out), "--num-processes", "2", "--batch-size", "4", "--max-steps",
           "4", "--max-length", "24", "--precision", "fp32", "--whole-word-masking", "--lr", "3e-3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Run written to") == 1  # the main process reports, once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre"]  # no leftover staging folders
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["optimizer_steps"] == 4
    assert metrics["held_out_mlm_loss_after"] < metrics["held_out_mlm_loss_before"]
    log = (out / "train.log").read_text()
    assert log.count("Distributed: 2 processes") == 1 and log.count("Pretrain:") == 1
    assert AutoModelForMaskedLM.from_pretrained(out / "model") is not None
