"""Drift: the EM shares recover a shifted prevalence and Bayes' correction moves the probabilities to it; the MMD
test keeps its false-alarm rate over repeated no-shift draws and finds a shift; `train` keeps a text-free reference,
`medclf drift` reports, decides (exit 0 / 3 / 2) and writes priors that `predict --priors` applies (and refuses on a
run whose guarantees they would void); the server's confidence histogram and opt-in label counts; no text and no
rare slice value in any output."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SECRET, make_rows, write_csv
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from medclf import TextClassifier
from medclf.cli.main import app
from medclf.config import LoadOptions
from medclf.core.shift import em_shares, mmd_test, prevalence_test, reweight
from medclf.core.tasks import MULTI_LABEL, SINGLE_LABEL
from medclf.serving.app import create_app
from medclf.serving.settings import ServeSettings

runner = CliRunner()
CENTRES = np.eye(3) * 2.0


def _calibrated(shares: np.ndarray, n: int, rng: np.random.Generator, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Texts of a 3-class problem drawn at `shares`, with the exact posteriors of a model that learnt `train`."""
    y = rng.choice(3, n, p=shares)
    x = CENTRES[y] + rng.normal(size=(n, 3))
    likelihood = np.exp(-0.5 * ((x[:, None, :] - CENTRES[None]) ** 2).sum(-1))
    posterior = likelihood * train
    return posterior / posterior.sum(axis=1, keepdims=True), y


def test_em_recovers_shifted_shares_and_bayes_correction_makes_the_posteriors_right_again():
    rng = np.random.default_rng(0)
    train, new = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.3, 0.6])
    probs, y = _calibrated(new, 4000, rng, train)
    found = em_shares(probs, train)
    truth = np.bincount(y, minlength=3) / len(y)
    assert np.abs(found - truth).max() < 0.03 and np.abs(train - truth).max() > 0.3  # the training shares are far off
    corrected = reweight(probs, train, found)
    assert corrected.shape == probs.shape and np.allclose(corrected.sum(axis=1), 1.0)
    assert (corrected.argmax(1) == y).mean() > (probs.argmax(1) == y).mean()  # decisions improve on the shifted mix
    reference, _ = _calibrated(train, 300, rng, train)
    assert prevalence_test(reference, probs, binary=False, permutations=199)[1] <= 0.01


def test_the_prevalence_test_keeps_its_level_even_when_the_probabilities_are_miscalibrated():
    rng = np.random.default_rng(1)
    train = np.array([0.5, 0.3, 0.2])

    def biased(n):  # a model that over-calls class 0: EM's shares are off, the permutation test is still exact
        probs, _ = _calibrated(train, n, rng, train)
        probs = probs * np.array([2.0, 1.0, 1.0])
        return probs / probs.sum(axis=1, keepdims=True)

    p_values = [SINGLE_LABEL.prior_shift(biased(300), train, reference=biased(200), permutations=199,
                                         resamples=10).p_value for _ in range(60)]
    assert np.mean(np.array(p_values) < 0.05) <= 0.05 + 3 * (0.05 * 0.95 / 60) ** 0.5


def test_multi_label_shares_are_estimated_per_label():
    rng = np.random.default_rng(2)
    train = np.array([0.3, 0.6])
    columns, truth = [], []
    for j, share in enumerate((0.7, 0.6)):  # label 0 moved from 0.3 to 0.7, label 1 stayed
        binary, y = _binary(share, 3000, rng, train[j])
        columns.append(binary)
        truth.append(y.mean())
    probs = np.stack(columns, axis=1)
    reference = np.stack([_binary(train[j], 500, rng, train[j])[0] for j in range(2)], axis=1)
    found = MULTI_LABEL.prior_shift(probs, train, reference=reference, permutations=199, resamples=20)
    assert np.abs(found.shares - np.array(truth)).max() < 0.04 and found.p_value <= 0.01
    assert np.all(found.low <= found.shares) and np.all(found.shares <= found.high)
    moved = MULTI_LABEL.reweight(probs, train, found.shares)
    assert moved.shape == probs.shape and moved[:, 0].mean() > probs[:, 0].mean()


def _binary(share: float, n: int, rng: np.random.Generator, train: float) -> tuple[np.ndarray, np.ndarray]:
    y = rng.random(n) < share
    x = np.where(y, 1.5, -1.5) + rng.normal(size=n)
    odds = np.exp(3.0 * x) * train / (1 - train)
    return odds / (1 + odds), y


def test_the_text_test_keeps_its_level_over_repeated_no_shift_draws_and_finds_a_shift():
    rng = np.random.default_rng(3)
    population = rng.normal(size=(5000, 16))
    alarms = [mmd_test(population[rng.choice(5000, 80)], population[rng.choice(5000, 120)], permutations=199,
                       seed=s).p_value < 0.05 for s in range(60)]
    assert np.mean(alarms) <= 0.05 + 3 * (0.05 * 0.95 / 60) ** 0.5
    moved = population[:120] + np.r_[1.0, np.zeros(15)]
    found = mmd_test(population[1000:1080], moved, permutations=199)
    assert found.p_value <= 0.01 and found.witness.shape == (120,) and found.n_new == 120


# ---------------------------------------------------------------- end to end through the CLI


@pytest.fixture(scope="module")
def drift_run(tmp_path_factory, tiny_model):
    data = write_csv(tmp_path_factory.mktemp("drift") / "notes.csv", make_rows(40))
    out = tmp_path_factory.mktemp("drift-run") / "run"
    result = runner.invoke(app, ["train", "--method", "embeddings", "--data", str(data), "--model", tiny_model,
                                 "--output", str(out), "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    return out, data


def _new_table(path, rows, *, seed=0):
    frame = pd.DataFrame(rows)
    frame["site"] = ["north" if i % 2 else "south" for i in range(len(frame))]
    frame.loc[0, "site"] = "RARE-" + SECRET  # seen once: folded into '(other)', never written
    frame["when"] = pd.date_range("2026-01-01", periods=len(frame), freq="D").astype(str)
    frame.to_csv(path, index=False)
    return path


def _outputs(folder):
    return "".join(p.read_text(errors="ignore") for p in folder.iterdir() if p.suffix in (".json", ".md"))


def test_train_keeps_a_reference_without_text_and_drift_reports_no_shift_on_new_data_alike(drift_run, tmp_path):
    out, _ = drift_run
    data = write_csv(tmp_path / "alike.csv", make_rows(40, seed=9))  # new notes of the same source
    info = json.loads((out / "reference" / "reference.json").read_text())
    assert info["part"] == "validation part" and info["embedding_precision"] == "fp32" and info["n"] > 0
    assert abs(sum(info["train_shares"].values()) - 1.0) < 1e-9
    assert SECRET.encode() not in (out / "reference" / "reference.safetensors").read_bytes()
    result = runner.invoke(app, ["drift", str(out), "--data", str(data), "--output", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "no shift detected" in result.stdout
    report = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert report["text"]["p_value"] > 0.025 and report["prevalence"]["p_value"] > 0.025 and not report["shift_detected"]
    assert {r["label"] for r in report["prevalence"]["rows"]} == {"cardio", "derm", "neuro"}
    for name in ("drift.md", "shares.png", "confidence.png", "priors.json"):
        assert (tmp_path / "d" / name).is_file()
    assert SECRET not in _outputs(tmp_path / "d") and SECRET not in result.output


def test_a_shifted_site_is_detected_with_its_slices_windows_and_labels_and_priors_help(drift_run, tmp_path):
    out, _ = drift_run
    rows = make_rows(60, seed=5, labels=("cardio",)) + make_rows(6, seed=6, labels=("derm", "neuro"))
    new = _new_table(tmp_path / "site-b.csv", rows)
    result = runner.invoke(app, ["drift", str(out), "--data", str(new), "--output", str(tmp_path / "d"),
                                 "--time-column", "when", "--windows", "3", "--slice-columns", "site"])
    assert result.exit_code == 3, result.output
    assert "shift detected" in result.stdout
    report = json.loads((tmp_path / "d" / "drift.json").read_text())
    cardio = next(r for r in report["prevalence"]["rows"] if r["label"] == "cardio")
    assert cardio["estimated"] > cardio["train"] + 0.3 and cardio["low"] <= cardio["estimated"] <= cardio["high"]
    assert report["prevalence"]["p_value"] < 0.025
    assert len(report["windows"]) == 3 and all(w["tested"] for w in report["windows"])
    assert report["labelled"]["n"] == 72 and "accuracy" in report["labelled"]["figures"]
    shown = {(s["by"], s["value"]) for s in report["text"]["most_shifted"]}
    assert all(by in ("length", "predicted", "site") for by, _ in shown)
    assert SECRET not in _outputs(tmp_path / "d") and "RARE-" not in _outputs(tmp_path / "d")
    # the priors drift wrote move predict's probabilities by Bayes' rule
    clf = TextClassifier.load(out)
    moved = TextClassifier.load(out, LoadOptions(priors=str(tmp_path / "d" / "priors.json")))
    texts = pd.read_csv(new)["text"].tolist()
    priors = json.loads((tmp_path / "d" / "priors.json").read_text())
    expected = SINGLE_LABEL.reweight(clf.predict_proba(texts), np.array(priors["train"]), np.array(priors["shares"]))
    assert np.allclose(moved.predict_proba(texts), expected, atol=1e-6)
    result = runner.invoke(app, ["predict", str(out), "--input", str(new), "--priors", str(tmp_path / "d" / "priors.json")])
    assert result.exit_code == 0, result.output


def test_bad_input_and_a_run_without_a_reference_give_one_sentence(drift_run, tmp_path, tiny_model, small_csv):
    out, data = drift_run
    bare = tmp_path / "bare"
    result = runner.invoke(app, ["train", "--method", "embeddings", "--data", str(small_csv), "--model", tiny_model,
                                 "--output", str(bare), "--no-reference"])
    assert result.exit_code == 0 and not (bare / "reference").exists()
    result = runner.invoke(app, ["drift", str(bare), "--data", str(small_csv), "--output", str(tmp_path / "x")])
    assert result.exit_code == 2 and "medclf reference" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["reference", str(bare), "--data", str(small_csv)])
    assert result.exit_code == 0, result.output
    assert json.loads((bare / "reference" / "reference.json").read_text())["part"].startswith(small_csv.name)
    no_text = write_csv(tmp_path / "other.csv", [{"body": "x", "site": "a"}] * 30)
    bad_time = _new_table(tmp_path / "t.csv", make_rows(10))
    frame = pd.read_csv(bad_time)
    frame.loc[3, "when"] = "not a date"
    frame.to_csv(bad_time, index=False)
    other_format = tmp_path / "notes.xml"
    other_format.write_text("<notes><note>chest pain</note></notes>")
    for extra, fix in ((["--data", str(no_text)], "text"), (["--data", str(other_format)], ".xml"), (["--data", str(bad_time), "--time-column", "when"], "not dates"),
                       (["--data", str(data), "--alpha", "1.5"], "between 0 and 1"),
                       (["--data", str(data), "--alpha", "0.001"], "--permutations"),
                       (["--data", str(data), "--time-column", "nope"], "is not in")):
        result = runner.invoke(app, ["drift", str(out), *extra, "--output", str(tmp_path / "y")])
        assert result.exit_code == 2 and fix in result.output and "Traceback" not in result.output, result.output
        assert SECRET not in result.output
    priors = tmp_path / "priors.json"
    priors.write_text(json.dumps({"kind": "medclf priors", "labels": ["a"], "multi_label": False, "train": [1.0],
                                  "shares": [1.0], "source": "x", "method": "x"}))
    result = runner.invoke(app, ["predict", str(out), "chest pain", "--priors", str(priors)])
    assert result.exit_code == 2 and "labels" in result.output


def test_priors_are_refused_on_a_run_whose_deferral_they_would_void_unless_asked(tmp_path, tiny_model, drift_run):
    out, data = drift_run
    deferring = tmp_path / "run"
    result = runner.invoke(app, ["train", "--method", "embeddings", "--data", str(data), "--model", tiny_model,
                                 "--output", str(deferring), "--target-precision", "0.8", "--calibration-size", "0.3"])
    assert result.exit_code == 0, result.output
    drifted = runner.invoke(app, ["drift", str(deferring), "--data", str(data), "--output", str(tmp_path / "d")])
    assert drifted.exit_code in (0, 3), drifted.output
    report = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert "deferred" in report["confidence"]["new"] and "deferred" in report["confidence"]["reference"]
    priors = str(tmp_path / "d" / "priors.json")
    result = runner.invoke(app, ["predict", str(deferring), "chest pain", "--priors", priors])
    assert result.exit_code == 2 and "--void-guarantees" in result.output and "deferral" in result.output
    result = runner.invoke(app, ["predict", str(deferring), "chest pain", "--priors", priors, "--void-guarantees"])
    assert result.exit_code == 0, result.output


def test_export_never_copies_the_reference(drift_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from medclf.export.onnx import export_onnx

    out, _ = drift_run
    result = export_onnx(out, quantize="none", output=tmp_path / "onnx")
    assert not any("reference" in p.name for p in Path(result.output_dir).rglob("*"))


def test_the_server_counts_confidence_always_and_labels_only_when_asked(drift_run):
    out, _ = drift_run
    for labels in (False, True):
        with TestClient(create_app(ServeSettings(run_dir=str(out), metrics_labels=labels))) as client:
            assert client.post("/v1/predict", json={"texts": ["chest pain ecg", "itchy rash"]}).status_code == 200
            metrics = client.get("/metrics").text
            count = next(line for line in metrics.splitlines() if line.startswith("medclf_prediction_confidence_count"))
            assert float(count.split()[-1]) == 2
            assert ("medclf_predicted_labels_total" in metrics) == labels
            info = client.get("/v1/model").json()
            assert set(info["reference"]["train_shares"]) == {"cardio", "derm", "neuro"}
            assert "chest" not in metrics


def test_a_multi_label_run_drifts_per_label(tmp_path, tiny_model):
    from test_multilabel import ml_rows

    data = write_csv(tmp_path / "notes.csv", ml_rows(20))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--method", "embeddings", "--multi-label", "--label-column", "labels",
                                 "--data", str(data), "--model", tiny_model, "--output", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["drift", str(out), "--data", str(data), "--output", str(tmp_path / "d")])
    assert result.exit_code in (0, 3), result.output
    report = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert report["task"] == "multi-label" and {r["label"] for r in report["prevalence"]["rows"]} == \
        {"cardio", "derm", "urgent"}
    assert "labelled" in report
    assert SECRET not in _outputs(tmp_path / "d")


def test_track_mlflow_logs_the_drift_figures_and_no_text(drift_run, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out, data = drift_run
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = runner.invoke(app, ["drift", str(out), "--data", str(data), "--output", str(tmp_path / "d"),
                                 "--track", "mlflow"])
    assert result.exit_code in (0, 3), result.output
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = runs[0].data.metrics
    report = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert logged["text_p_value"] == pytest.approx(report["text"]["p_value"])
    assert SECRET.encode() not in (tmp_path / "store.db").read_bytes()


def test_a_partly_labelled_table_is_tested_whole_and_measured_on_its_labelled_rows(drift_run, tmp_path):
    out, _ = drift_run
    frame = pd.DataFrame(make_rows(30, seed=11))
    frame.loc[frame.index[:50], "label"] = ""  # 50 of 90 notes not labelled yet
    new = tmp_path / "partly.csv"
    frame.to_csv(new, index=False)
    result = runner.invoke(app, ["drift", str(out), "--data", str(new), "--output", str(tmp_path / "d")])
    assert result.exit_code in (0, 3), result.output
    report = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert report["n"] == 90 and report["labelled"]["n"] == 40
    assert report["options"]["data"] == "partly.csv" and str(tmp_path) not in json.dumps(report)


@pytest.mark.parametrize("long_text", [None, "chunk"])
def test_one_pass_gives_the_same_probabilities_and_vectors_as_the_two_calls(trained_run, drift_run, long_text):
    texts = ["chest pain radiating to the arm " * 30, "itchy rash on both hands", "headache and numbness " * 12]
    for run in (trained_run, drift_run[0]):
        clf = TextClassifier.load(run, LoadOptions(backend="torch", precision="fp32", long_text=long_text))
        probs, vectors = clf.predict_proba_and_embed(texts)
        assert np.allclose(probs, clf.predict_proba(texts), atol=1e-6)
        assert np.allclose(vectors, clf.embed(texts), atol=1e-6)
