"""Every encoder family a medical user may pick goes through train, predict, chunk, export and explain.

Each family is built tiny with random weights (tests/conftest.py: build_tiny_family), with the tokenizer kind it
ships with (WordPiece, or byte-level BPE with <s>/</s> and pad id 1 for RoBERTa, XLM-R and Longformer)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FAMILIES, SECRET, build_tiny_family, make_rows, write_csv
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.inference.classifier import TextClassifier

runner = CliRunner()
LONG = (f"{SECRET} patient seen today history reviewed medications listed allergies none vitals stable plan "
        "discussed follow up arranged chest pain troponin ecg murmur")


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    return result.stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_every_command_works_for_the_family(family, tmp_path):
    model = build_tiny_family(family, tmp_path / family)
    rows = [{**row, "text": row["text"] + " seen today history reviewed plan discussed follow up arranged"}
            for row in make_rows(8)]
    small_csv = write_csv(tmp_path / "notes.csv", rows)
    run = tmp_path / "run"
    # train in chunk mode: windows of 16 tokens pooled into one document prediction, trained end to end
    invoke("train", "--data", str(small_csv), "--model", model, "--output", str(run), "--epochs", "2", "--lr", "3e-3",
           "--batch-size", "6", "--precision", "fp32", "--max-length", "16", "--long-text", "chunk", "--max-chunks", "4",
           "--few-shot", "off")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["truncation"]["train"]["mean_windows"] > 1
    texts = pd.read_csv(small_csv)["text"].tolist()

    # predict: a file in chunk mode (the run's), and one long text read as one truncated sequence
    invoke("predict", str(run), "--input", str(small_csv), "--output", str(tmp_path / "p.jsonl"), "--backend", "torch")
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(records) == len(texts) and {r["label"] for r in records} <= {"cardio", "derm", "neuro"}
    assert all(0 <= r["window"]["start"] < r["window"]["end"] for r in records)
    one = json.loads(invoke("predict", str(run), LONG, "--long-text", "truncate", "--backend", "torch"))
    assert one["label"] in {"cardio", "derm", "neuro"} and "window" not in one

    # export: fp32 within 1e-4 of PyTorch on the same windows; int8 where a recipe runs on the family
    out = invoke("export", str(run), "--data", str(small_csv))
    info = json.loads((run / "onnx" / "export.json").read_text())
    assert info["check"]["fp32_max_abs_diff"] <= 1e-4
    if info["check"]["int8_file"] is None:
        assert info["check"]["int8_skipped"] and "int8 (" in out
    torch_probs = TextClassifier.load(run, backend="torch").predict_proba(texts[:12])
    onnx_probs = TextClassifier.load(run, backend="onnx").predict_proba(texts[:12])
    assert np.abs(torch_probs - onnx_probs).max() < 1e-4

    # explain: one score per word, over the windows, by integrated gradients and by occlusion
    for method in ("integrated-gradients", "occlusion"):
        invoke("explain", str(run), LONG, "--method", method, "--output", str(tmp_path / f"{method}.json"))
        [item] = json.loads((tmp_path / f"{method}.json").read_text())
        assert [w["word"] for w in item["words"]] == LONG.split() and item["label"] in {"cardio", "derm", "neuro"}
        scores = [w["score"] for w in item["words"] if w["seen"]]
        assert len(scores) > len(LONG.split()) // 2 and np.isfinite(scores).all()
