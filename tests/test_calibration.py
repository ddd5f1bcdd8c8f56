"""Temperature scaling: fitting, ECE/Brier on hand-made cases, no changed decision, and the same calibrated
probabilities from every inference path (Python API, CLI, server, ONNX, plain transformers)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import make_rows, write_csv
from typer.testing import CliRunner

from medclf import TextClassifier, TrainConfig, train
from medclf.cli.main import app
from medclf.core.calibration import (
    brier_score,
    expected_calibration_error,
    fit_temperature,
    fold_temperature,
    reliability,
    scale_thresholds,
    temperature_for,
)
from medclf.core.tasks import MULTI_LABEL, SINGLE_LABEL, sigmoid, softmax

runner = CliRunner()


def test_fitting_recovers_a_known_temperature_on_synthetic_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(8000, 4))
    true_t = 2.0
    probs = softmax(logits / true_t)
    y = np.array([rng.choice(4, p=p) for p in probs])
    assert fit_temperature(logits, y, SINGLE_LABEL) == pytest.approx(true_t, rel=0.08)
    y_multi = (rng.random(logits.shape) < sigmoid(logits / 0.5)).astype(float)  # under-confident model
    assert fit_temperature(logits, y_multi, MULTI_LABEL) == pytest.approx(0.5, rel=0.08)


def test_a_calibrated_model_keeps_temperature_1():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=(8000, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(logits)])
    assert fit_temperature(logits, y, SINGLE_LABEL) == pytest.approx(1.0, abs=0.08)


def test_ece_and_brier_on_hand_made_cases():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bin of 0.9: right 1 of 2 (gap 0.4); bin of 0.6: right 2 of 2 (gap 0.4); each half of the texts
    assert expected_calibration_error(probs, y, SINGLE_LABEL) == pytest.approx(0.4)
    assert brier_score(probs, y, SINGLE_LABEL) == pytest.approx((0.02 + 1.62 + 0.32 + 0.32) / 4)
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), SINGLE_LABEL) == 0.0
    r = reliability(probs, y, SINGLE_LABEL)
    assert sum(r["count"]) == 4 and r["count"][13] == 2 and r["count"][8] == 2  # 0.9 -> bin 13, 0.6 -> bin 8
    # multi-label: every (text, label) probability is one prediction
    p = np.array([[0.8, 0.2], [0.8, 0.2]])
    y2 = np.array([[1, 0], [0, 0]])
    assert expected_calibration_error(p, y2, MULTI_LABEL) == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)
    assert brier_score(p, y2, MULTI_LABEL) == pytest.approx((0.04 + 0.04 + 0.64 + 0.04) / 4)


def test_temperature_changes_no_decision():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, size=(500, 5))
    for t in (0.3, 1.7, 9.0):
        assert (softmax(z).argmax(axis=1) == softmax(z / t).argmax(axis=1)).all()
        thresholds = rng.uniform(0.05, 0.95, size=5)
        assert ((sigmoid(z) >= thresholds) == (sigmoid(z / t) >= scale_thresholds(thresholds, t))).all()


@pytest.fixture(scope="module")
def cal_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("cal-data") / "notes.csv", make_rows(60))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, cal_csv):
    """The same training with and without calibration (same seed, same split; 36 validation texts)."""
    root = tmp_path_factory.mktemp("cal")
    common = dict(data=str(cal_csv), model=tiny_model, epochs=4, lr=3e-3, batch_size=8, precision="fp32",
                  val_size=0.25, max_length=32)
    on = train(TrainConfig(**common, output=str(root / "on")), progress=False)
    off = train(TrainConfig(**common, output=str(root / "off"), calibrate=False), progress=False)
    return on, off


def test_calibration_changes_probabilities_not_predictions(runs):
    on, off = runs
    cal = on.metrics["test"]["calibration"]
    assert cal["temperature"] != 1.0 and cal["folded_into_model"] is True
    assert off.metrics["test"]["calibration"]["temperature"] == 1.0
    assert on.metrics["test"]["accuracy"] == off.metrics["test"]["accuracy"]
    a = pd.read_csv(on.run_dir / "predictions_test.csv")
    b = pd.read_csv(off.run_dir / "predictions_test.csv")
    assert a["predicted"].tolist() == b["predicted"].tolist()
    assert not np.allclose(a["score"], b["score"])
    # the figures before scaling are the uncalibrated run's figures
    assert cal["ece_before"] == pytest.approx(off.metrics["test"]["calibration"]["ece_after"], abs=1e-6)
    assert cal["ece_after"] == pytest.approx(expected_calibration_error(
        a[[c for c in a.columns if c.startswith("prob_")]].to_numpy(),
        np.array([on.metrics["test"]["labels"].index(str(v)) for v in a["label"]]), SINGLE_LABEL), abs=1e-5)


def test_report_shows_calibration_and_the_diagram(runs):
    on, _ = runs
    assert (on.run_dir / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (on.run_dir / "report.md").read_text()
    assert "## Calibration" in report and "calibration.png" in report and "expected calibration error" in report
    assert "Calibration: temperature" in (on.run_dir / "train.log").read_text()


def test_every_inference_path_gives_the_same_calibrated_probabilities(runs, cal_csv, tmp_path):
    from fastapi.testclient import TestClient
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from medclf.export.onnx import export_onnx
    from medclf.serving.app import create_app
    from medclf.serving.settings import ServeSettings

    on, _ = runs
    run = tmp_path / "run"
    shutil.copytree(on.run_dir, run)
    texts = pd.read_csv(cal_csv)["text"].tolist()[:6]
    api = TextClassifier.load(run, backend="torch").predict_proba(texts)

    # the temperature is folded into the saved head: plain transformers gives the calibrated probabilities too
    model = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    tok = AutoTokenizer.from_pretrained(run / "model")
    import torch

    with torch.no_grad():
        plain = torch.softmax(model(**tok(texts, padding=True, return_tensors="pt")).logits, dim=-1).numpy()
    assert np.abs(plain - api).max() < 1e-5

    result = runner.invoke(app, ["predict", str(run), *texts, "--backend", "torch"])
    cli = np.array([[json.loads(line)["probabilities"][lab] for lab in on.metrics["test"]["labels"]]
                    for line in result.stdout.splitlines()])
    assert np.abs(cli - api).max() < 1e-6

    with TestClient(create_app(ServeSettings(run_dir=str(run), backend="torch"))) as client:
        served = client.post("/v1/predict", json={"texts": texts}).json()["predictions"]
    served = np.array([[r["probabilities"][lab] for lab in on.metrics["test"]["labels"]] for r in served])
    assert np.abs(served - api).max() < 1e-6

    export_onnx(run, quantize="none", data=str(cal_csv))
    onnx = TextClassifier.load(run, backend="onnx").predict_proba(texts)
    assert np.abs(onnx - api).max() < 1e-4


def test_a_temperature_kept_in_the_run_is_applied_by_every_path(runs, tmp_path):
    """Where the head cannot take the temperature, the run keeps it and TextClassifier divides by it."""
    on, _ = runs
    run = tmp_path / "run"
    shutil.copytree(on.run_dir, run)
    texts = ["patient chest pain troponin", "patient itchy rash plaques"]
    raw_logits = TextClassifier.load(run, backend="torch")._logits(texts)
    config = json.loads((run / "train_config.json").read_text())
    config["run"]["temperature"] = 2.5
    (run / "train_config.json").write_text(json.dumps(config))
    clf = TextClassifier.load(run, backend="torch")
    assert clf.temperature == 2.5
    expected = softmax(raw_logits / 2.5)
    assert np.abs(clf.predict_proba(texts) - expected).max() < 1e-6
    result = runner.invoke(app, ["predict", str(run), *texts, "--backend", "torch"])
    got = [json.loads(line)["probabilities"] for line in result.stdout.splitlines()]
    assert np.abs(np.array([[g[lab] for lab in clf.labels] for g in got]) - expected).max() < 1e-6


def test_fold_temperature_divides_the_last_linear_layer():
    import torch

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = torch.nn.Linear(3, 2)

    m = Model()
    x = torch.randn(4, 3)
    before = m.classifier(x)
    assert fold_temperature(m, 2.0)
    assert torch.allclose(m.classifier(x), before / 2.0, atol=1e-6)
    assert not fold_temperature(torch.nn.Module(), 2.0)


def test_no_calibrate_through_the_cli(tmp_path, tiny_model, small_csv):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(small_csv), "--model", tiny_model, "--output", str(out),
                                 "--max-steps", "2", "--no-calibrate"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["config"]["calibrate"] is False and saved["run"]["calibration_temperature"] == 1.0
    assert "(off (--no-calibrate))" in (out / "train.log").read_text()


def test_too_few_or_perfectly_separated_validation_texts_leave_the_temperature_at_1():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, size=(20, 3))
    assert temperature_for(logits, logits.argmax(axis=1), SINGLE_LABEL)[0] == 1.0  # 20 < 30 texts
    logits = rng.normal(0, 2, size=(100, 3))
    t, note = temperature_for(logits, logits.argmax(axis=1), SINGLE_LABEL)  # every text right: T would go to 0
    assert t == 1.0 and "perfectly separated" in note
    y = np.array([rng.choice(3, p=p) for p in softmax(logits / 2)])
    t, note = temperature_for(logits, y, SINGLE_LABEL)
    assert t > 1.2 and "fitted on 100 validation texts" in note
