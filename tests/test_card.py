"""The model card in every run (RUN/model/README.md): its YAML header parses (library_name, pipeline_tag, tags,
metrics, the test figures in the model-index), its sections say what a reader needs, it holds no text, and
`medclf card` rewrites it; `medclf runs` lists and sorts runs and cross-validations."""

import json
import shutil

import pandas as pd
import pytest
import yaml
from conftest import SECRET, make_rows, write_csv
from typer.testing import CliRunner

from medclf import TrainConfig, train
from medclf.cli.main import app

runner = CliRunner()
SECTIONS = ["## Intended use", "## Out of scope", "## Training data", "## Method and options", "## Test figures",
            "## Per class", "## Calibration", "## Known limits", "## How to load it"]


def read_card(run_dir):
    text = (run_dir / "model" / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_a_fine_tuned_run_carries_a_model_card(trained_run):
    head, body = read_card(trained_run)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert head["library_name"] == "transformers" and head["pipeline_tag"] == "text-classification"
    assert {"medclf", "medical", "finetune"} <= set(head["tags"]) and set(head["metrics"]) == {"accuracy", "f1"}
    assert "base_model" not in head  # a local directory has no hub id to name
    results = head["model-index"][0]["results"]
    figures = {m["name"]: m["value"] for r in results for m in r["metrics"]}
    assert figures["macro-F1"] == pytest.approx(metrics["test"]["macro_f1"], abs=1e-4)
    assert figures["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
    for section in SECTIONS:
        assert section in body, section
    assert "not a medical device" in body and "notes.csv" in body
    for label in ("cardio", "derm", "neuro"):
        assert f"| {label} |" in body
    assert "AutoModelForSequenceClassification" in body and "medclf export" in body
    assert SECRET not in body
    from huggingface_hub import ModelCard  # the format's own parser reads it too

    card = ModelCard.load(str(trained_run / "model" / "README.md"))
    assert card.data.to_dict()["pipeline_tag"] == "text-classification"


def test_embeddings_and_multi_label_runs_get_the_same_card(embedding_run, tiny_model, tmp_path):
    head, body = read_card(embedding_run)
    assert head["library_name"] == "medclf" and "embeddings" in head["tags"]
    assert "head.safetensors" in body and SECRET not in body
    rows = make_rows(12)
    for i, row in enumerate(rows):
        row["labels"] = row.pop("label") + ("|urgent" if i % 2 else "")
    data = write_csv(tmp_path / "codes.csv", rows)
    run = train(TrainConfig(data=str(data), label_column="labels", multi_label=True, model=tiny_model,
                            output=str(tmp_path / "ml"), max_steps=2, max_length=32, few_shot="off"), progress=False).run_dir
    head, body = read_card(run)
    assert "multi-label" in head["tags"]
    assert {m["name"] for r in head["model-index"][0]["results"] for m in r["metrics"]} == {
        "micro-F1", "macro-F1", "subset accuracy"}
    assert "## Per label" in body and "threshold" in body and SECRET not in body


def test_card_command_rewrites_the_card(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    before = (copy / "model" / "README.md").read_text()
    (copy / "model" / "README.md").unlink()
    result = runner.invoke(app, ["card", str(copy)])
    assert result.exit_code == 0, result.output
    assert (copy / "model" / "README.md").read_text() == before.replace(trained_run.name, copy.name)
    out = tmp_path / "card.md"
    assert runner.invoke(app, ["card", str(copy), "--output", str(out)]).exit_code == 0
    assert out.read_text().startswith("---\n")
    bad = runner.invoke(app, ["card", str(tmp_path)])
    assert bad.exit_code == 2 and "not a medclf run directory" in bad.output


def test_runs_lists_sorts_and_writes_csv(trained_run, embedding_run, tiny_model, small_csv, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(trained_run, root / "fine")
    shutil.copytree(embedding_run, root / "team" / "emb")
    cv = runner.invoke(app, ["cv", "--data", str(small_csv), "--model", tiny_model, "--output", str(root / "cv"),
                             "--folds", "2", "--max-steps", "2", "--max-length", "32", "--workers", "1",
                             "--few-shot", "off"])
    assert cv.exit_code == 0, cv.output
    result = runner.invoke(app, ["runs", str(root), "--sort", "macro_f1", "--descending", "--output",
                                 str(tmp_path / "runs.csv")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(table["run"]) == ["cv", "fine", "team/emb"]  # the cv's fold runs are not listed again
    assert table["macro_f1"].is_monotonic_decreasing
    cv_row = table[table["run"] == "cv"].iloc[0]
    assert cv_row["kind"] == "cv (2 folds)" and cv_row["macro_f1_low"] <= cv_row["macro_f1"] <= cv_row["macro_f1_high"]
    fine = table[table["run"] == "fine"].iloc[0]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert fine["macro_f1"] == pytest.approx(metrics["test"]["macro_f1"], abs=1e-6)
    assert fine["method"] == "finetune" and fine["data"] == "notes.csv" and len(fine["data_sha256"]) == 12
    assert "| fine | train |" in result.stdout and SECRET not in result.stdout
    assert runner.invoke(app, ["runs", str(root), "--sort", "colour"]).exit_code == 2
    empty = runner.invoke(app, ["runs", str(tmp_path / "runs" / "team" / "emb" / "model")])
    assert empty.exit_code == 2 and "No medclf runs" in empty.output
