"""Deferral at a target precision: over repeated calibration draws the chosen threshold falls short of the target no
more often than the stated level; an unreachable target keeps no threshold and says so; a run trained with
--target-precision routes texts through predict_or_defer, `medclf predict`, the HTTP API (with a Prometheus count),
the report and the card; bad options exit 2 in one sentence; no text in any reason or output."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SECRET, make_rows, tracked_metrics, write_csv
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from medclf import TextClassifier
from medclf.cli.main import app
from medclf.core.deferral import (
    DeferralRequest,
    binomial_p,
    choose_threshold,
    deferral_figures,
    rule_sentence,
)
from medclf.errors import MedclfError
from medclf.serving.app import create_app
from medclf.serving.settings import ServeSettings

runner = CliRunner()


def _model(n: int, rng: np.random.Generator, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A calibrated 5-class model: each true label drawn from its row's probabilities."""
    logits = rng.normal(scale=scale, size=(n, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cum = probs.cumsum(axis=1)
    y = (rng.random(n)[:, None] > cum).sum(axis=1)
    return probs, np.minimum(y, 4)


def test_the_threshold_falls_short_of_the_target_no_more_often_than_delta_over_repeated_draws():
    rng = np.random.default_rng(0)
    population, y_pop = _model(100_000, rng)
    conf, right = population.max(axis=1), population.argmax(axis=1) == y_pop
    for target in (0.8, 0.9):
        short, coverage = 0, []
        draws = 150
        for _ in range(draws):
            cal = rng.choice(len(conf), 400, replace=False)
            val = rng.choice(len(conf), 200, replace=False)
            rule = choose_threshold(conf[cal], right[cal], DeferralRequest(target), n_labels=5,
                                    order_confidence=conf[val], order_correct=right[val])
            if rule["threshold"] is None:
                coverage.append(0.0)
                continue
            kept = conf >= rule["threshold"]
            short += right[kept].mean() < target
            coverage.append(kept.mean())
        assert short / draws <= 0.1 + 3 * (0.1 * 0.9 / draws) ** 0.5, (target, short)
        ranked = np.sort(np.cumsum(right[np.argsort(-conf)]) / np.arange(1, len(conf) + 1) >= target)
        assert np.mean(coverage) > 0.3 and np.mean(coverage) < ranked.mean() + 0.02  # useful, and never above the oracle


def test_the_test_is_the_exact_binomial_one_and_equals_the_clopper_pearson_bound():
    from scipy.stats import beta

    for errors, n in ((0, 22), (1, 38), (3, 50), (10, 60)):
        p = binomial_p(errors, n, 0.1)
        upper = beta.ppf(0.9, errors + 1, n - errors)  # one-sided Clopper-Pearson upper bound at level 0.9
        assert (p <= 0.1) == (upper <= 0.1)
    assert binomial_p(0, 21, 0.1) > 0.1 >= binomial_p(0, 22, 0.1)  # log(0.1) / log(0.9) = 21.9 texts


def test_an_unreachable_target_keeps_no_threshold_defers_everything_and_says_so():
    rng = np.random.default_rng(1)
    probs, y = _model(200, rng, scale=0.5)
    rule = choose_threshold(probs.max(1), probs.argmax(1) == y, DeferralRequest(0.99), n_labels=5,
                            order_confidence=probs.max(1), order_correct=probs.argmax(1) == y)
    assert rule["threshold"] is None
    assert "cannot be shown" in rule_sentence(rule) and "--calibration-size" in rule_sentence(rule)
    found = deferral_figures(probs, y, rule, list("abcde"))
    assert found["decided"] == 0 and found["precision"] is None
    assert all(cell["deferred"] in (1.0, None) for cell in found["per_class"].values())


def test_deferral_figures_are_those_of_the_decided_texts():
    rng = np.random.default_rng(2)
    probs, y = _model(500, rng)
    rule = choose_threshold(probs[:250].max(1), probs[:250].argmax(1) == y[:250], DeferralRequest(0.85), n_labels=5,
                            order_confidence=probs[250:].max(1), order_correct=probs[250:].argmax(1) == y[250:])
    assert rule["threshold"] is not None and rule["tested"] >= 1 and rule["p_value"] <= 0.1
    found = deferral_figures(probs[250:], y[250:], rule, list("abcde"))
    kept = probs[250:].max(1) >= rule["threshold"]
    right = probs[250:].argmax(1) == y[250:]
    assert found["decided"] == kept.sum() and found["coverage"] == pytest.approx(kept.mean())
    assert found["precision"] == pytest.approx(right[kept].mean()) and found["low"] <= found["precision"] <= found["high"]
    for k, lab in enumerate("abcde"):
        assert found["per_class"][lab]["deferred"] == pytest.approx((~kept[y[250:] == k]).mean())
    curve = found["curve"]
    assert curve[-1]["coverage"] == 1.0 and curve[-1]["precision"] == pytest.approx(right.mean())


@pytest.mark.parametrize("kwargs", [{"target_precision": 1.5}, {"target_precision": 0.9, "delta": 0}])
def test_a_bad_request_names_the_fix(kwargs):
    with pytest.raises(MedclfError, match="between 0 and 1"):
        DeferralRequest(**kwargs)


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def deferring_run(tmp_path_factory, tiny_model):
    data = write_csv(tmp_path_factory.mktemp("defer") / "notes.csv", make_rows(40))
    out = tmp_path_factory.mktemp("defer-run") / "run"
    result = runner.invoke(app, ["train", "--method", "embeddings", "--data", str(data), "--model", tiny_model,
                                 "--output", str(out), "--precision", "fp32", "--calibration-size", "0.3",
                                 "--target-precision", "0.8"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    return out, data


def test_train_chooses_a_rule_on_the_calibration_part_and_reports_it(deferring_run):
    out, _ = deferring_run
    test = json.loads((out / "metrics.json").read_text())["test"]
    found, spec = test["deferral"], json.loads((out / "train_config.json").read_text())
    rule = spec["run"]["deferral"]
    assert rule == found["rule"] and rule["target_precision"] == 0.8 and rule["delta"] == 0.1
    assert rule["n_calibration"] == 29 and spec["config"]["target_precision"] == 0.8
    assert rule["backend"] == "torch" and rule["precision"] == "fp32"
    assert found["n"] == test["n"] and sum(c["n"] for c in found["per_class"].values()) == test["n"]
    report, card = (out / "report.md").read_text(), (out / "model" / "README.md").read_text()
    assert "## Deferral to a person" in report and (out / "deferral.png").is_file()
    assert "## When a person decides" in card and "Learn then Test" in report
    assert "Deferral:" in (out / "train.log").read_text()
    validation = pd.read_csv(out / "predictions_validation.csv")
    assert len(validation) == json.loads((out / "metrics.json").read_text())["data"]["n_val"]


def test_predict_or_defer_routes_each_text_by_the_rule(deferring_run):
    out, _ = deferring_run
    clf = TextClassifier.load(out)
    texts = [f"{SECRET} chest pain troponin ecg", "rash itchy plaques skin", "stroke numbness", "patient"]
    one = clf.predict_or_defer(texts[0])
    many = clf.predict_or_defer(texts)
    assert one == many[0] and len(many) == 4
    probs = clf.predict_proba(texts)
    threshold = clf.deferral["threshold"]
    for routed, row, label in zip(many, probs, clf.predict(texts)):
        assert routed.score == pytest.approx(row.max())
        decided = threshold is not None and row.max() >= threshold
        assert routed.deferred == (not decided) and (routed.label == label if decided else routed.label is None)
        assert routed.reason is None if decided else (routed.reason and SECRET not in routed.reason)


def test_predict_and_the_server_mark_deferred_texts(deferring_run, tmp_path):
    out, data = deferring_run
    target = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(out), "--input", str(data), "--output", str(target)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(target)
    clf = TextClassifier.load(out)
    threshold = clf.deferral["threshold"]
    expected = frame["score"] < threshold if threshold is not None else np.ones(len(frame), bool)
    assert frame["deferred"].tolist() == list(expected)
    with TestClient(create_app(ServeSettings(run_dir=str(out)))) as c:
        answer = c.post("/v1/predict", json={"texts": ["chest pain", "rash skin", "patient"]}).json()["predictions"]
        assert all(isinstance(p["deferred"], bool) for p in answer)
        metrics = c.get("/metrics").text
        counted = [line for line in metrics.splitlines() if line.startswith("medclf_deferred_texts_total")]
        assert counted and float(counted[0].split()[-1]) == sum(p["deferred"] for p in answer)
        assert c.get("/v1/model").json()["deferral"]["target_precision"] == 0.8


def test_without_a_rule_or_with_bad_options_one_sentence(trained_run, tmp_path, tiny_model, small_csv):
    with pytest.raises(MedclfError, match="--target-precision"):
        TextClassifier.load(trained_run).predict_or_defer("x")
    for extra, fix in ((["--target-precision", "1.5"], "between 0 and 1"),
                       (["--target-precision", "0.9", "--calibration-size", "0"], "calibration part"),
                       (["--target-precision", "0.9", "--multi-label"], "single-label")):
        result = runner.invoke(app, ["train", "--data", str(small_csv), "--model", tiny_model, "--output",
                                     str(tmp_path / "x"), *extra])
        assert result.exit_code == 2 and fix in result.output and "Traceback" not in result.output, result.output


def test_each_slice_gets_its_share_decided_and_the_precision_of_those_decisions():
    from medclf.core.subgroups import subgroup_figures
    from medclf.core.tasks import SINGLE_LABEL

    rng = np.random.default_rng(3)
    probs, y = _model(300, rng)
    site = np.array(["A"] * 150 + ["B"] * 150)
    found = subgroup_figures(SINGLE_LABEL, y, probs, probs.argmax(1), {"site": list(site)}, resamples=200,
                             defer_below=0.7)
    assert found["keys"][-2:] == ["coverage", "auto_precision"]
    for row in found["columns"]["site"]:
        idx = site == row["value"]
        kept = probs[idx].max(1) >= 0.7
        assert row["figures"]["coverage"] == pytest.approx(kept.mean())
        assert row["figures"]["auto_precision"] == pytest.approx((probs[idx].argmax(1) == y[idx])[kept].mean())
        band = row["intervals"]["coverage"]
        assert band["low"] <= row["figures"]["coverage"] <= band["high"]


def test_mlflow_gets_the_deferral_and_label_set_figures(deferring_run, tmp_path, monkeypatch):
    out, _ = deferring_run
    logged, store = tracked_metrics(out, tmp_path, monkeypatch)
    assert SECRET.encode() not in store.read_bytes()
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert logged["test_deferral.coverage"] == pytest.approx(test["deferral"]["coverage"])
    row = next(r for r in test["sets"]["rows"] if r["score"] == "aps" and r["by_class"] and r["level"] == 0.9)
    assert logged["test_sets.aps_by_class.0.9.coverage"] == pytest.approx(row["coverage"])


def test_export_rechooses_the_threshold_for_each_onnx_model_and_refuses_an_unchecked_one(deferring_run, tmp_path):
    pytest.importorskip("onnxruntime")
    import shutil

    from medclf.export.onnx import export_onnx

    out, data = deferring_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    export_onnx(run, quantize="none")
    info = json.loads((run / "onnx" / "export.json").read_text())["deferral"]
    assert info["checked"] and set(info["models"]) == {"model.onnx"}
    onnx = TextClassifier.load(run, backend="onnx")
    rule = onnx.deferral
    assert rule == info["models"]["model.onnx"] and rule["target_precision"] == 0.8 and rule["backend"] == "onnx"
    torch_threshold = TextClassifier.load(run, backend="torch").deferral["threshold"]
    if torch_threshold is not None:  # fp32 ONNX is within 1e-4 of PyTorch: the scan lands on the same grid step
        assert rule["threshold"] == pytest.approx(torch_threshold, abs=0.01)
    assert len(onnx.predict_or_defer(["chest pain ecg", "rash"])) == 2
    # the training table changed since: the texts cannot be read back, so nothing is re-checked and ONNX refuses
    spec = json.loads((run / "train_config.json").read_text())
    moved = tmp_path / "changed.csv"
    moved.write_text(data.read_text() + "patient x,extra words,cardio\n")
    spec["run"]["data_file"] = str(moved)
    (run / "train_config.json").write_text(json.dumps(spec))
    export_onnx(run, quantize="none")
    assert not json.loads((run / "onnx" / "export.json").read_text())["deferral"]["checked"]
    with pytest.raises(MedclfError, match="medclf export"):
        TextClassifier.load(run, backend="onnx")
    auto = TextClassifier.load(run)  # auto never uses a model without its rule: PyTorch, and predict still works
    assert auto.backend == "torch" and auto.deferral == spec["run"]["deferral"]
    assert runner.invoke(app, ["predict", str(run), "chest pain"]).exit_code == 0


def test_cv_refuses_the_options_it_cannot_honour(tiny_model, small_csv, tmp_path):
    result = runner.invoke(app, ["cv", "--data", str(small_csv), "--model", tiny_model, "--output", str(tmp_path / "cv"),
                                 "--target-precision", "0.9"])
    assert result.exit_code == 2 and "no calibration part" in result.output, result.output


def test_evaluate_reports_the_rule_and_the_sets_on_a_new_table(deferring_run, tmp_path):
    out, _ = deferring_run
    fresh = write_csv(tmp_path / "site-b.csv", make_rows(20, seed=7))
    target = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", str(out), "--data", str(fresh), "--output", str(target)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(target.read_text())
    assert metrics["deferral"]["n"] == 60 and metrics["deferral"]["rule"]["target_precision"] == 0.8
    assert metrics["sets"]["n_test"] == 60 and "Split-conformal label sets" in result.output
    assert "automatically" in result.output and SECRET not in result.output
