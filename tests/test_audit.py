"""`medclf audit`: planted label flips found by confident learning on out-of-fold probabilities, the files it writes
(no text unless asked), the corrected copy, multi-label audits, and the refusals."""

import hashlib
import json
import random
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import SECRET, make_rows, write_csv
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from medclf import MedclfError, TrainConfig
from medclf.cli.main import app
from medclf.core.label_quality import label_quality

runner = CliRunner()
SWAP = {"cardio": "derm", "derm": "neuro", "neuro": "cardio"}


def noisy_rows(flips=6, seed=3):
    rows = make_rows(30, seed=seed)
    flipped = sorted(random.Random(0).sample(range(len(rows)), flips))
    for i in flipped:
        rows[i]["label"] = SWAP[rows[i]["label"]]
    return rows, flipped


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    rows, flipped = noisy_rows()
    return write_csv(tmp_path_factory.mktemp("audit") / "notes.csv", rows), flipped


def audit_args(data, model, out, *extra):
    return ["audit", "--data", str(data), "--model", model, "--output", str(out), "--folds", "3", "--workers", "1",
            "--max-length", "32", "--precision", "fp32", "--few-shot", "off", *extra]


def test_audit_finds_planted_flips_writes_no_text_and_fixes_only_a_copy(tmp_path, tiny_model_64, noisy):
    data, flipped = noisy
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    out = tmp_path / "audit"
    result = runner.invoke(app, audit_args(data, tiny_model_64, out, "--id-column", "note_id", "--fix",
                                           "--accept-top", "2"))
    assert result.exit_code == 0, result.output
    assert "flagged" in result.stdout and SECRET not in result.output
    issues = pd.read_csv(out / "issues.csv")
    assert list(issues.columns) == ["rank", "row", "note_id", "given_label", "suggested_label", "label_quality"]
    assert issues["rank"].tolist() == list(range(1, len(issues) + 1))
    assert issues["label_quality"].is_monotonic_increasing  # worst first
    # the planted flips are what it finds: nearly all flagged, near the top, and the score separates them
    assert len(set(issues["row"][:8]) & set(flipped)) >= 5
    table = pd.read_csv(data)
    for _, issue in issues[issues["row"].isin(flipped)].iterrows():
        assert issue["note_id"] == table["note_id"][issue["row"]]
        assert issue["given_label"] == table["label"][issue["row"]]
        assert issue["suggested_label"] == issue["note_id"].split("-")[0]  # the class the note was written for
    oof = pd.read_parquet(out / "out_of_fold.parquet")
    assert sorted(oof["row"]) == list(range(len(table)))
    assert np.allclose(oof[["prob_cardio", "prob_derm", "prob_neuro"]].sum(axis=1), 1.0, atol=1e-4)
    assert roc_auc_score(oof["row"].isin(flipped), -oof["label_quality"]) >= 0.9
    assert oof["is_issue"].sum() == len(issues)
    report = json.loads((out / "audit.json").read_text())
    assert report["rows"] == 90 and report["issues"] == len(issues) and report["method"] == "embeddings"
    assert {c["label"] for c in report["per_class"]} == {"cardio", "derm", "neuro"}
    assert sum(p["rows"] for p in report["pairs"]) == len(issues)
    assert "| given | suggested | rows |" in (out / "audit.md").read_text()
    assert (out / "cv" / "cv.json").is_file() and (out / "cv" / "fold-3" / "model").is_dir()
    # no text anywhere in what the audit wrote (parquet read back, every other file as bytes) but the data's own copy
    for path in out.rglob("*"):
        if path.is_file() and path.name != "fixed.csv":
            if path.suffix == ".parquet":
                assert not pd.read_parquet(path).astype(str).apply(lambda c: c.str.contains(SECRET)).any().any()
            else:
                assert SECRET.encode() not in path.read_bytes(), path
    # --fix --accept-top 2: a copy with exactly the two top suggestions applied; the file given is never modified
    assert hashlib.sha256(data.read_bytes()).hexdigest() == before
    fixed = pd.read_csv(out / "fixed.csv")
    assert list(fixed.columns) == list(table.columns) and len(fixed) == len(table)
    changed = sorted(np.flatnonzero((fixed["label"] != table["label"]).to_numpy()).tolist())
    top = issues.head(2)
    assert changed == sorted(top["row"].tolist())
    for _, issue in top.iterrows():
        assert fixed["label"][issue["row"]] == issue["suggested_label"]
    assert (fixed.drop(columns="label") == table.drop(columns="label")).all().all()
    assert report["fixed"]["relabelled_rows"] == top["row"].tolist()
    # --overwrite replaces an earlier audit; --keep-text puts the text in issues.csv, as asked
    again = runner.invoke(app, audit_args(data, tiny_model_64, out, "--overwrite", "--folds", "2", "--keep-text"))
    assert again.exit_code == 0, again.output
    assert json.loads((out / "audit.json").read_text())["folds"] == 2 and not (out / "fixed.csv").exists()
    assert pd.read_csv(out / "issues.csv")["text"].str.contains(SECRET).all()


def test_multi_label_audit(tmp_path, tiny_model_64):
    rows, flipped = noisy_rows()
    for i, row in enumerate(rows):  # multi-label form: a set of labels per note, "urgent" on every third
        row["labels"] = row.pop("label") + ("|urgent" if i % 3 == 0 else "")
    data = write_csv(tmp_path / "multi.csv", rows)
    from medclf.training.audit import audit

    result = audit(TrainConfig(data=str(data), model=tiny_model_64, output=str(tmp_path / "a"), multi_label=True,
                               label_column=["labels"], method="embeddings", max_length=32, precision="fp32",
                               few_shot="off"),
                   folds=3, workers=1)
    oof = pd.read_parquet(result.output / "out_of_fold.parquet")
    assert {"prob_cardio", "prob_derm", "prob_neuro", "prob_urgent"} <= set(oof.columns)
    assert oof["given_label"][0].count("|") == 1  # labels joined with the run's separator
    assert len(set(result.issues["row"][:10]) & set(flipped)) >= 4
    assert roc_auc_score(oof["row"].isin(flipped), -oof["label_quality"]) >= 0.8
    report = json.loads((result.output / "audit.json").read_text())
    assert report["multi_label"] and {c["label"] for c in report["per_class"]} == {"cardio", "derm", "neuro", "urgent"}


def test_label_quality_on_hand_made_probabilities():
    labels = ["a", "b"]
    given = ["a"] * 10 + ["b"] * 10
    probs = np.array([[0.9, 0.1]] * 9 + [[0.05, 0.95]] + [[0.1, 0.9]] * 9 + [[0.97, 0.03]])
    found = label_quality(probs, given, labels)
    assert found.issues.tolist() == [19, 9]  # the two contradicted rows, the more confident contradiction first
    assert found.suggested[9] == "b" and found.suggested[19] == "a"
    assert found.quality[9] == pytest.approx(0.05) and found.quality[0] == pytest.approx(0.9)
    assert [c["flagged"] for c in found.per_class] == [1, 1]
    assert all(0.0 < c["estimated_noise_rate"] < 0.2 for c in found.per_class)
    with pytest.raises(MedclfError, match="Every class needs at least one row"):
        label_quality(np.array([[0.9, 0.1], [0.8, 0.2]]), ["a", "a"], labels)


@pytest.mark.parametrize("extra, message", [
    (["--fix"], "--accept-top K"),
    (["--accept-top", "3"], "add --fix"),
    (["--id-column", "mrn"], "--id-column 'mrn' is not a column"),
    (["--fix", "--accept-top", "0"], "--accept-top must be a positive whole number"),
])
def test_audit_refusals_exit_2_before_training(tmp_path, tiny_model, noisy, extra, message):
    data, _ = noisy
    result = runner.invoke(app, audit_args(data, tiny_model, tmp_path / "a", *extra))
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and SECRET not in result.output
    assert not (tmp_path / "a").exists()


def test_audit_without_cleanlab_says_how_to_install(tmp_path, tiny_model, noisy, monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # import cleanlab now raises ImportError
    result = runner.invoke(app, audit_args(noisy[0], tiny_model, tmp_path / "a"))
    assert result.exit_code == 2 and 'pip install "medclf[audit]"' in result.output
