"""--multi-label: label formats, iterative split, thresholds, metrics, and the CLI end to end (train,
evaluate, predict, serve, export) with a tiny random-init model."""

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SECRET, WORDS, write_csv
from typer.testing import CliRunner

from medclf import MedclfError, TextClassifier, TrainConfig, train
from medclf.cli.main import app
from medclf.core.labels import check_label_sets, indicator_labels, split_labels
from medclf.core.metrics import multilabel_metrics
from medclf.core.tasks import MULTI_LABEL, sigmoid, tune_thresholds
from medclf.training.splits import stratified_split

runner = CliRunner()


ADMIN = ["appointment", "rescheduled", "insurance", "form", "signed", "letter", "copy", "sent"]


def ml_rows(n_per_class, seed=0):
    """Cardiology, dermatology or administrative notes, and independently of that 'urgent' or not: labels
    cardio, derm, urgent; a routine administrative note has no label at all."""
    rng = random.Random(seed)
    rows = []
    for specialty in ("cardio", "derm", None):
        for i in range(n_per_class):
            urgent = i % 2 == 0
            words = rng.sample(WORDS[specialty] if specialty else ADMIN, 4)
            words += ["stat", "urgent"] if urgent else ["routine", "review"]
            labels = ([specialty] if specialty else []) + (["urgent"] if urgent else [])
            rows.append({"text": f"note {SECRET} " + " ".join(words), "labels": "|".join(labels)})
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------- thresholds and metrics on hand-made cases


def test_tuned_threshold_separates_a_label_perfectly_and_keeps_0_5_without_positives():
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    p = np.array([[0.9, 0.7], [0.4, 0.2], [0.3, 0.6], [0.1, 0.1]])
    t = tune_thresholds(y, p)
    assert t[0] == pytest.approx(0.35)  # midway between the lowest positive (0.4) and the highest negative (0.3)
    assert t[1] == 0.5  # no positive text: nothing to tune on


def test_tuned_threshold_maximises_f1_and_breaks_ties_towards_0_5():
    # positives at 0.8 and 0.3, negatives at 0.6 and 0.1: cutting at 0.7 gives F1 2/3 (1 TP, 1 FN), cutting at 0.2
    # gives F1 2*2/(3+2) = 0.8 -> 0.2 wins.
    y = np.array([[1], [0], [1], [0]])
    p = np.array([[0.8], [0.6], [0.3], [0.1]])
    assert tune_thresholds(y, p)[0] == pytest.approx(0.2)
    # two equally good cuts (0.7 and 0.2 both give F1 2/3 here): the one nearer 0.5 is kept
    y = np.array([[1], [0], [0], [1], [0]])
    p = np.array([[0.8], [0.6], [0.5], [0.3], [0.1]])
    assert tune_thresholds(y, p)[0] == pytest.approx(0.7)


def test_tuned_thresholds_never_score_below_0_5_on_the_data_they_were_tuned_on():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.3).astype(int)
    p = np.clip(0.5 * y + rng.random((200, 4)) * 0.6, 0, 1)
    tuned = multilabel_metrics(y, p, list("abcd"), thresholds=tune_thresholds(y, p))
    fixed = multilabel_metrics(y, p, list("abcd"), thresholds=np.full(4, 0.5))
    for label in "abcd":
        assert tuned["per_class"][label]["f1"] >= fixed["per_class"][label]["f1"] - 1e-12


def test_multilabel_metrics_on_a_hand_made_case():
    labels = ["a", "b", "c"]
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]])
    p = np.array([[0.9, 0.2, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.1], [0.6, 0.7, 0.2]])
    m = multilabel_metrics(y, p, labels, thresholds=np.full(3, 0.5))
    # predictions: {a}, {a}, {}, {a, b}; a: TP 2 FP 1 FN 0; b: TP 1 FP 0 FN 1; c: never present, never predicted
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)  # c has no support here: left out, as for classes
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # TP 3, FP 1, FN 1
    # per text F1: 1, 2/3, 1 (nothing true, nothing predicted), 2/3
    assert m["samples_f1"] == pytest.approx((1 + 2 / 3 + 1 + 2 / 3) / 4)
    assert m["subset_accuracy"] == pytest.approx(0.5)
    assert m["hamming_loss"] == pytest.approx(2 / 12)
    assert m["texts_without_label"] == 1 and m["labels_per_text"] == pytest.approx(1.0)
    assert m["per_class"]["a"]["roc_auc"] == pytest.approx(1.0) and m["per_class"]["c"]["roc_auc"] is None


def test_sigmoid_matches_torch_and_is_stable_for_large_logits():
    logits = np.array([[-800.0, -3.0, 0.0, 2.5, 800.0]], dtype=np.float32)
    assert np.allclose(sigmoid(logits), torch.sigmoid(torch.tensor(logits)).numpy(), atol=1e-7)
    assert np.isfinite(sigmoid(logits)).all()


def test_balanced_pos_weight_is_negatives_over_positives():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 0]], dtype=np.float32)
    loss = MULTI_LABEL.loss(y, 2, "balanced")
    assert loss.pos_weight.tolist() == [1.0, 3.0]
    assert MULTI_LABEL.loss(y, 2, "none").pos_weight is None


# ---------------------------------------------------------------- label formats and their errors


def test_delimited_labels_split_strip_and_allow_empty_cells():
    got = split_labels(["a|b", " b | a ", "", None, "c"], sep="|", source="t.csv", column="labels")
    assert got == [("a", "b"), ("b", "a"), (), (), ("c",)]


def test_a_stray_separator_is_refused_with_the_rows():
    with pytest.raises(MedclfError, match=r"empty label .*data rows 2, 3"):
        split_labels(["a|b", "a||b", "b|"], sep="|", source="t.csv", column="labels")


def test_indicator_columns_give_label_tuples_and_refuse_other_values():
    frame = pd.DataFrame({"x": ["1", "0", "true"], "y": ["0", "1", "no"]})
    labels, empty = indicator_labels(frame, ["x", "y"], source="t.csv")
    assert labels == [("x",), ("y",), ("x",)] and empty == []
    with pytest.raises(MedclfError, match="must hold 0 or 1"):
        indicator_labels(pd.DataFrame({"x": ["1", "2"]}), ["x"], source="t.csv")


def test_label_set_checks_name_the_problem():
    with pytest.raises(MedclfError, match=r"'z' never occur"):
        check_label_sets([("x",), ("y",), ()], source="t", declared=["x", "y", "z"])
    with pytest.raises(MedclfError, match=r"'x' are on every row"):
        check_label_sets([("x", "y"), ("x",), ("x",)], source="t")
    with pytest.raises(MedclfError, match=r"pass --label-sep ';'"):
        check_label_sets([("a;b",), ("b",), ("a",)], source="t", sep="|")
    with pytest.raises(MedclfError, match=r"No row of t has more than one label"):
        check_label_sets([("a",), ("b",), ()], source="t", sep="|")
    assert check_label_sets([("b", "a"), ("a",), ()], source="t", sep="|") == ["a", "b"]


def test_iterative_split_keeps_every_label_on_both_sides():
    rng = random.Random(0)
    labels = [tuple(lab for lab, share in (("common", 0.5), ("mid", 0.2), ("rare", 0.06)) if rng.random() < share)
              for _ in range(200)]
    keep, held = stratified_split(labels, fraction=0.2, seed=1, source="t", part="test", option="--test-data")
    assert sorted(keep + held) == list(range(200)) and len(held) == 40
    for label in ("common", "mid", "rare"):
        total = sum(label in labels[i] for i in range(200))
        in_held = sum(label in labels[i] for i in held)
        assert in_held >= 1 and sum(label in labels[i] for i in keep) >= 1
        assert abs(in_held - 0.2 * total) <= 1.5  # the label's share is kept, rare ones included


def test_config_refuses_several_label_columns_without_multi_label_and_huge_chunk_steps():
    with pytest.raises(MedclfError, match="need --multi-label"):
        TrainConfig(label_column=["a", "b"])
    assert TrainConfig(label_column=["a"]).label_column == "a"
    assert TrainConfig(label_column=["a", "b"], multi_label=True).label_columns == ["a", "b"]
    with pytest.raises(MedclfError, match="lower --batch-size, --max-chunks or --max-length"):
        TrainConfig(long_text="chunk", batch_size=64, max_chunks=32, max_length=256)


# ---------------------------------------------------------------- end to end through the CLI


FINETUNE = ["--epochs", "40", "--lr", "1e-2", "--batch-size", "4", "--precision", "fp32", "--max-length", "32", "--few-shot", "off"]


def cli_train(out, tiny_model, data, *extra):
    result = runner.invoke(app, [
        "train", "--data", str(data), "--test-data", str(data), "--val-data", str(data), "--model", tiny_model,
        "--output", str(out), "--multi-label", "--label-column", "labels", *extra])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "micro-F1" in result.stdout and "threshold" in result.stdout
    return out


@pytest.fixture(scope="module")
def ml_data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("ml") / "notes.csv", ml_rows(4))


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory, tiny_model, ml_data):
    """Fine-tuned (encoder and head) through the CLI."""
    return cli_train(tmp_path_factory.mktemp("mlrun") / "run", tiny_model, ml_data, *FINETUNE)


@pytest.fixture(scope="module")
def ml_emb_run(tmp_path_factory, tiny_model, ml_data):
    """--method embeddings through the CLI: one logistic regression per label on frozen features."""
    return cli_train(tmp_path_factory.mktemp("mlemb") / "run", tiny_model, ml_data, "--method", "embeddings")


def truth(data):
    return [sorted(cell.split("|")) if cell else [] for cell in pd.read_csv(data, keep_default_na=False)["labels"]]


def test_a_multilabel_run_writes_thresholds_metrics_and_report(ml_run):
    metrics = json.loads((ml_run / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["task"] == test["task"] == "multi-label"
    assert test["texts_without_label"] == 2  # texts with no label are allowed
    assert test["micro_f1"] >= 0.7  # a tiny random model, 12 notes: it learns, it need not be perfect
    # validation = test here, and the thresholds were tuned on it: never worse than 0.5 on any label
    assert test["macro_f1"] >= test["at_threshold_0.5"]["macro_f1"]
    saved = json.loads((ml_run / "train_config.json").read_text())
    assert saved["config"]["multi_label"] is True and saved["config"]["label_sep"] == "|"
    assert saved["run"]["labels"] == ["cardio", "derm", "urgent"]
    assert saved["run"]["thresholds"] == test["thresholds"]
    assert all(0 < t < 1 for t in test["thresholds"].values())
    model_config = json.loads((ml_run / "model" / "config.json").read_text())
    assert model_config["problem_type"] == "multi_label_classification"
    report = (ml_run / "report.md").read_text()
    assert "| tuned (used) |" in report and "| 0.5 for every label |" in report
    assert not (ml_run / "confusion_matrix.png").exists()
    for path in ml_run.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".log", ".csv"):
            assert SECRET not in path.read_text(), path


def test_multilabel_predictions_survive_save_and_load(ml_run, ml_data):
    texts = pd.read_csv(ml_data)["text"].tolist()
    clf = TextClassifier.load(ml_run)
    assert clf.multi_label and clf.labels == ["cardio", "derm", "urgent"]
    probs = clf.predict_proba(texts)
    saved = pd.read_csv(ml_run / "predictions_test.csv", keep_default_na=False).sort_values("row")
    assert np.allclose(probs, saved[[f"prob_{lab}" for lab in clf.labels]].to_numpy(), atol=1e-5)
    thresholds = np.array([clf.thresholds[lab] for lab in clf.labels])
    expected = [[lab for lab, on in zip(clf.labels, row) if on] for row in probs >= thresholds]
    assert clf.predict(texts) == expected
    assert clf.predict(texts[0]) == expected[0]  # a string gives one list of labels
    assert saved["predicted"].tolist() == ["|".join(e) for e in expected]


def test_a_tiny_model_overfits_multilabel_notes_with_embeddings_and_save_load_keeps_them(ml_emb_run, ml_data):
    test = json.loads((ml_emb_run / "metrics.json").read_text())["test"]
    assert test["micro_f1"] == 1.0 and test["macro_f1"] == 1.0 and test["subset_accuracy"] == 1.0
    clf = TextClassifier.load(ml_emb_run)
    assert clf.predict(pd.read_csv(ml_data)["text"].tolist()) == truth(ml_data)


def test_saved_thresholds_decide_the_labels(ml_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ml_run, run)
    config = json.loads((run / "train_config.json").read_text())
    text = "note chest pain stat urgent"
    for value, expected in ((0.0, ["cardio", "derm", "urgent"]), (1.01, [])):
        config["run"]["thresholds"] = {lab: value for lab in config["run"]["labels"]}
        (run / "train_config.json").write_text(json.dumps(config))
        clf = TextClassifier.load(run)
        assert clf.predict(text) == expected
        result = runner.invoke(app, ["predict", str(run), text])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["labels"] == expected


def test_evaluate_and_predict_through_the_cli(ml_run, ml_data, tmp_path):
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", str(ml_run), "--data", str(ml_data), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "Hamming loss" in result.stdout and "confusion matrix" not in result.stdout
    metrics = json.loads(out.read_text())
    saved = json.loads((ml_run / "metrics.json").read_text())["test"]
    assert metrics["n"] == 12 and metrics["thresholds"] == saved["thresholds"]
    assert metrics["micro_f1"] == pytest.approx(saved["micro_f1"])  # same texts, same model, same thresholds

    result = runner.invoke(app, ["predict", str(ml_run), "--input", str(ml_data), "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    expected = TextClassifier.load(ml_run).predict(pd.read_csv(ml_data)["text"].tolist())
    assert table["labels"].tolist() == ["|".join(e) for e in expected]
    assert {f"prob_{lab}" for lab in ("cardio", "derm", "urgent")} <= set(table.columns)
    assert "text" not in table.columns

    result = runner.invoke(app, ["predict", str(ml_run), "--input", str(ml_data), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 12 and all(isinstance(r["labels"], list) and len(r["top_k"]) == 2 for r in records)
    assert SECRET not in result.stdout


def test_serve_answers_with_label_lists(ml_emb_run, ml_data):
    from fastapi.testclient import TestClient

    from medclf.serving.app import create_app
    from medclf.serving.settings import ServeSettings

    texts = pd.read_csv(ml_data)["text"].tolist()[:4]
    with TestClient(create_app(ServeSettings(run_dir=str(ml_emb_run)))) as client:
        info = client.get("/v1/model").json()
        assert info["multi_label"] is True and set(info["thresholds"]) == set(info["labels"])
        assert info["test_metrics"]["micro_f1"] == 1.0
        answer = client.post("/v1/predict", json={"texts": texts})
        assert answer.status_code == 200
        records = answer.json()["predictions"]
        assert [r["labels"] for r in records] == truth(ml_data)[:4]
        assert len(records[0]["probabilities"]) == 3 and "label" not in records[0]
        assert client.post("/v1/predict", json={"text": texts[0]}).json()["labels"] == truth(ml_data)[0]


def test_multilabel_runs_export_to_onnx_with_the_same_decisions(ml_run, ml_data, tmp_path):
    import shutil

    from medclf.export.onnx import export_onnx

    run = tmp_path / "run"
    shutil.copytree(ml_run, run)
    result = export_onnx(run, quantize="int8", data=str(ml_data), int8_recipe="blockwise-32")
    assert result.fp32_max_abs_diff <= 1e-4 and result.int8_tried[0]["recipe"] == "blockwise-32"
    info = json.loads((run / "onnx" / "export.json").read_text())
    assert info["multi_label"] is True and "sigmoid" in info["outputs"]["logits"]
    texts = pd.read_csv(ml_data)["text"].tolist()
    torch_clf = TextClassifier.load(run, backend="torch")
    onnx_clf = TextClassifier.load(run, backend="onnx")
    assert np.abs(torch_clf.predict_proba(texts) - onnx_clf.predict_proba(texts)).max() < 1e-4
    assert onnx_clf.predict(texts) == torch_clf.predict(texts)


def test_indicator_columns_chunk_mode_and_embeddings(tmp_path, tiny_model):
    """Several 0/1 columns (labels in column order), long documents in windows, and the embeddings method."""
    rows = []
    for row in ml_rows(4, seed=3):
        present = set(row["labels"].split("|")) - {""}
        rows.append({"text": row["text"] + " filler words" * 12, **{lab: int(lab in present) for lab in
                                                                   ("urgent", "cardio", "derm")}})
    data = write_csv(tmp_path / "flags.csv", rows)
    common = dict(data=str(data), test_data=str(data), val_data=str(data), model=tiny_model, multi_label=True,
                  label_column=["urgent", "cardio", "derm"], max_length=16, long_text="chunk", max_chunks=8)
    result = train(TrainConfig(**common, output=str(tmp_path / "ft"), epochs=2, batch_size=4, few_shot="off"),
                   progress=False)
    assert result.metrics["test"]["labels"] == ["urgent", "cardio", "derm"]
    assert result.metrics["data"]["truncation"]["train"]["mean_windows"] > 1
    clf = TextClassifier.load(result.run_dir)
    assert clf.long_text == "chunk" and all(isinstance(p, list) for p in clf.predict([r["text"] for r in rows]))
    result = clf.predictions([rows[0]["text"]])
    probs, windows = result.probabilities, result.windows
    assert probs.shape == (1, 3) and windows[0] is not None

    emb = train(TrainConfig(**common, output=str(tmp_path / "emb"), method="embeddings"), progress=False)
    assert emb.metrics["test"]["task"] == "multi-label" and "thresholds" in emb.metrics["test"]
    clf = TextClassifier.load(emb.run_dir)
    assert clf.multi_label and len(clf.predict_proba(rows[0]["text"])) == 3
    probs = clf.predict_proba([r["text"] for r in rows])
    thresholds = np.array([clf.thresholds[lab] for lab in clf.labels])
    assert clf.predict([r["text"] for r in rows]) == [[lab for lab, on in zip(clf.labels, p) if on] for p in probs >= thresholds]


def bad_case(tmp_path, rows, *extra):
    data = write_csv(tmp_path / "bad.csv", rows)
    return runner.invoke(app, ["train", "--data", str(data), "--output", str(tmp_path / "run"), "--model", "/nonexistent",
                               *extra])


@pytest.mark.parametrize("make, extra, message", [
    (lambda r: r, ["--multi-label", "--label-column", "labels", "--label-sep", ";"], "more than one label"),
    (lambda r: [{**x, "labels": x["labels"].replace("|", "||")} for x in r], ["--multi-label", "--label-column", "labels"],
     "empty label"),
    (lambda r: [{"text": x["text"], "a": 1, "b": int("urgent" in x["labels"])} for x in r],
     ["--multi-label", "--label-column", "a", "--label-column", "b"], "on every row"),
    (lambda r: [{"text": x["text"], "a": 0, "b": int("urgent" in x["labels"])} for x in r],
     ["--multi-label", "--label-column", "a", "--label-column", "b"], "never occur"),
    (lambda r: [{"text": x["text"], "a": "maybe", "b": 1} for x in r],
     ["--multi-label", "--label-column", "a", "--label-column", "b"], "must hold 0 or 1"),
    (lambda r: [{"text": x["text"], "a": 1, "b": 0} for x in r], ["--label-column", "a", "--label-column", "b"],
     "need --multi-label"),
    (lambda r: r, ["--multi-label", "--label-column", "labels", "--long-text", "chunk", "--max-chunks", "256",
                   "--batch-size", "64"], "lower --batch-size"),
])
def test_bad_multilabel_inputs_exit_2_with_one_sentence(tmp_path, make, extra, message):
    result = bad_case(tmp_path, make(ml_rows(4)), *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output and SECRET not in result.output


def test_a_test_file_with_an_unknown_label_is_refused(tmp_path, tiny_model):
    train_file = write_csv(tmp_path / "train.csv", ml_rows(4))
    test_rows = ml_rows(2, seed=5)
    test_rows[0]["labels"] = "cardio|oncology"
    test_file = write_csv(tmp_path / "test.csv", test_rows)
    result = runner.invoke(app, ["train", "--data", str(train_file), "--test-data", str(test_file), "--model", tiny_model,
                                 "--multi-label", "--label-column", "labels", "--output", str(tmp_path / "run")])
    assert result.exit_code == 2 and "'oncology'" in result.output


def test_a_multilabel_run_defers_a_text_when_any_label_is_undecided(tmp_path, tiny_model):
    """--target-precision on a multi-label run: one threshold per label (Bonferroni over the labels), chosen on the
    calibration part; predict_or_defer, `medclf predict`, evaluate, the report, the card and the ONNX re-check."""
    data = write_csv(tmp_path / "notes.csv", ml_rows(30))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--method", "embeddings", "--multi-label", "--label-column", "labels",
                                 "--data", str(data), "--model", tiny_model, "--output", str(out),
                                 "--calibration-size", "0.3", "--target-precision", "0.8"])
    assert result.exit_code == 0, result.output
    test = json.loads((out / "metrics.json").read_text())["test"]
    rule, found = test["deferral"]["rule"], test["deferral"]
    labels = ["cardio", "derm", "urgent"]
    assert set(rule["per_label"]) == set(labels) and rule["n_calibration"] > 0 and "sets" not in test
    assert set(found["per_label"]) == set(labels) and set(found["per_class"]) == set(labels)
    clf = TextClassifier.load(out)
    texts = pd.read_csv(data)["text"].tolist()
    routed = clf.predict_or_defer(texts)
    predicted = clf.predict(texts)
    probs = clf.predict_proba(texts)
    thresholds = np.array([clf.thresholds[lab] for lab in labels])
    confidence = np.where(probs >= thresholds, probs, 1 - probs)
    limits = np.array([np.inf if rule["per_label"][lab]["threshold"] is None else rule["per_label"][lab]["threshold"]
                       for lab in labels])
    for r, p, conf in zip(routed, predicted, confidence, strict=True):
        assert r.deferred == (not (conf >= limits).all()) and r.score == pytest.approx(conf.min())
        if r.deferred:
            assert r.label is None and SECRET not in r.reason
            assert "could not be shown" in r.reason or any(lab in r.reason for lab in labels)
        else:
            assert r.label == p and isinstance(r.label, list)
    result = runner.invoke(app, ["predict", str(out), "--input", str(data), "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert table["deferred"].tolist() == [r.deferred for r in routed]
    result = runner.invoke(app, ["evaluate", str(out), "--data", str(data), "--output", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "e.json").read_text())["deferral"]
    assert evaluated["decided"] == sum(not r.deferred for r in routed)
    report, card = (out / "report.md").read_text(), (out / "model" / "README.md").read_text()
    assert "test texts holding it" in report and "any of its labels" in report
    assert "When a person decides" in card
    for text in (report, card, (out / "metrics.json").read_text()):
        assert SECRET not in text
    pytest.importorskip("onnxruntime")
    from medclf.export.onnx import export_onnx

    export_onnx(out, quantize="none")
    info = json.loads((out / "onnx" / "export.json").read_text())["deferral"]
    assert info["checked"] and set(info["models"]["model.onnx"]["per_label"]) == set(labels)
    onnx = TextClassifier.load(out, backend="onnx")
    assert [r.deferred for r in onnx.predict_or_defer(texts)] == [r.deferred for r in routed] or \
        rule["per_label"] != onnx.deferral["per_label"]  # ONNX keeps its own thresholds; equal ones route equally


def test_multilabel_cv_reports_each_folds_deferral_out_of_fold(tmp_path, tiny_model):
    data = write_csv(tmp_path / "notes.csv", ml_rows(20))
    out = tmp_path / "cv"
    result = runner.invoke(app, ["cv", "--method", "embeddings", "--multi-label", "--label-column", "labels",
                                 "--data", str(data), "--model", tiny_model, "--output", str(out), "--folds", "2",
                                 "--workers", "1", "--target-precision", "0.8"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "cv.json").read_text())
    folds = [json.loads((out / f"fold-{k}" / "metrics.json").read_text())["test"]["deferral"] for k in (1, 2)]
    assert all(set(f["rule"]["per_label"]) == {"cardio", "derm", "urgent"} for f in folds)
    assert report["deferral"]["decided"] == sum(f["decided"] for f in folds) and "sets" not in report
    assert SECRET not in result.output
