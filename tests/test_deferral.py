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
    choose_rule,
    choose_threshold,
    deferral_figures,
    routing,
    rule_sentence,
)
from medclf.core.tasks import MULTI_LABEL, SINGLE_LABEL
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
            rule = choose_threshold(conf[cal], right[cal], target_precision=target, delta=0.1, lowest=0.2,
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
    rule = choose_rule(SINGLE_LABEL, probs, y, DeferralRequest(0.99), labels=list("abcde"), order_probs=probs,
                       order_y=y)
    assert rule["threshold"] is None
    assert "cannot be shown" in rule_sentence(rule) and "--calibration-size" in rule_sentence(rule)
    found = deferral_figures(SINGLE_LABEL, probs, y, rule, list("abcde"))
    assert found["decided"] == 0 and found["precision"] is None
    assert all(cell["deferred"] in (1.0, None) for cell in found["per_class"].values())


def test_deferral_figures_are_those_of_the_decided_texts():
    rng = np.random.default_rng(2)
    probs, y = _model(500, rng)
    rule = choose_rule(SINGLE_LABEL, probs[:250], y[:250], DeferralRequest(0.85), labels=list("abcde"),
                       order_probs=probs[250:], order_y=y[250:])
    assert rule["threshold"] is not None and rule["tested"] >= 1 and rule["p_value"] <= 0.1
    assert "per_label" not in rule
    found = deferral_figures(SINGLE_LABEL, probs[250:], y[250:], rule, list("abcde"))
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


def _multi_model(n: int, rng: np.random.Generator, n_labels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A calibrated multi-label model: each label present with its own stated probability."""
    probs = 1.0 / (1.0 + np.exp(-rng.normal(scale=2.5, size=(n, n_labels))))
    return probs, (rng.random((n, n_labels)) < probs).astype(float)


def test_multi_label_every_labels_precision_holds_at_once_no_more_often_short_than_delta():
    rng = np.random.default_rng(4)
    labels = ["a", "b", "c"]
    population, y_pop = _multi_model(60_000, rng)
    thresholds = np.array([0.4, 0.5, 0.6])  # the run's tuned thresholds decide each label
    right_pop = MULTI_LABEL.decisions_right(population, y_pop, thresholds)
    conf_pop = MULTI_LABEL.decision_confidence(population, thresholds)
    draws, short, coverage = 120, 0, []
    for _ in range(draws):
        cal, val = rng.choice(len(population), 300, replace=False), rng.choice(len(population), 200, replace=False)
        rule = choose_rule(MULTI_LABEL, population[cal], y_pop[cal], DeferralRequest(0.85), labels=labels,
                           order_probs=population[val], order_y=y_pop[val], thresholds=thresholds)
        assert set(rule["per_label"]) == set(labels) and "Bonferroni" in rule["method"]
        limits = np.array([np.inf if rule["per_label"][lab]["threshold"] is None else rule["per_label"][lab]["threshold"]
                           for lab in labels])
        kept = conf_pop >= limits
        # the guarantee: every label's decisions at its own threshold are right at least 85% of the time, jointly
        short += any(right_pop[kept[:, j], j].mean() < 0.85 for j in range(3) if kept[:, j].any())
        coverage.append(kept.all(axis=1).mean())
    assert short / draws <= 0.1 + 3 * (0.1 * 0.9 / draws) ** 0.5, short
    oracle = []  # each label's lowest threshold of precision 0.85 on the whole population
    for j in range(3):
        ranked = np.argsort(-conf_pop[:, j])
        precision = np.cumsum(right_pop[ranked, j]) / np.arange(1, len(ranked) + 1)
        oracle.append(conf_pop[ranked[np.flatnonzero(precision >= 0.85).max()], j])
    best = (conf_pop >= np.array(oracle)).all(axis=1).mean()  # 0.65 here; the guarantee on 300 rows costs
    assert 0.2 < np.mean(coverage) < best  # a useful share of texts is decided whole, never more than the oracle


def test_multi_label_figures_decide_a_text_only_when_every_label_is_decided():
    rng = np.random.default_rng(5)
    labels = ["a", "b", "c"]
    probs, y = _multi_model(800, rng)
    rule = choose_rule(MULTI_LABEL, probs[:400], y[:400], DeferralRequest(0.85), labels=labels,
                       order_probs=probs[400:600], order_y=y[400:600])
    assert all(rule["per_label"][lab]["threshold"] is not None for lab in labels)
    assert rule["threshold"] == max(rule["per_label"][lab]["threshold"] for lab in labels)
    sentence = rule_sentence(rule)
    assert "any of its labels" in sentence and all(f"{lab} {rule['per_label'][lab]['threshold']:.3f}" in sentence
                                                   for lab in labels)
    test_p, test_y = probs[600:], y[600:]
    found = deferral_figures(MULTI_LABEL, test_p, test_y, rule, labels)
    conf = np.maximum(test_p, 1 - test_p)  # at the default thresholds of 0.5, the probability of each decision
    limits = np.array([rule["per_label"][lab]["threshold"] for lab in labels])
    kept = (conf >= limits).all(axis=1)
    right = (test_p >= 0.5) == test_y.astype(bool)
    assert found["decided"] == kept.sum() and found["precision"] == pytest.approx(right[kept].mean())
    for j, lab in enumerate(labels):
        own = conf[:, j] >= limits[j]
        assert found["per_label"][lab]["decided"] == own.sum()
        assert found["per_label"][lab]["precision"] == pytest.approx(right[own, j].mean())
        holds = test_y[:, j] == 1
        assert found["per_class"][lab]["n"] == holds.sum()
        assert found["per_class"][lab]["deferred"] == pytest.approx((~kept[holds]).mean())


def test_multi_label_a_label_that_cannot_be_shown_defers_every_text_and_is_named():
    rng = np.random.default_rng(6)
    probs, y = _multi_model(500, rng)
    probs[:, 2] = 0.5  # label c: a coin toss, never decidable at 90%
    y[:, 2] = rng.random(500) < 0.5
    rule = choose_rule(MULTI_LABEL, probs, y, DeferralRequest(0.9), labels=["a", "b", "c"], order_probs=probs,
                       order_y=y)
    assert rule["per_label"]["c"]["threshold"] is None and rule["threshold"] is None
    assert rule["per_label"]["a"]["threshold"] is not None and rule["per_label"]["b"]["threshold"] is not None
    assert "cannot be shown" in rule_sentence(rule) and "rows for c (" in rule_sentence(rule)
    assert deferral_figures(MULTI_LABEL, probs, y, rule, ["a", "b", "c"])["decided"] == 0


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
                       (["--calibration-size", "0.2", "--multi-label"], "--target-precision")):
        result = runner.invoke(app, ["train", "--data", str(small_csv), "--model", tiny_model, "--output",
                                     str(tmp_path / "x"), *extra])
        assert result.exit_code == 2 and fix in result.output and "Traceback" not in result.output, result.output


def test_each_slice_gets_its_share_decided_and_the_precision_of_those_decisions():
    from medclf.core.subgroups import subgroup_figures

    rng = np.random.default_rng(3)
    probs, y = _model(300, rng)
    site = np.array(["A"] * 150 + ["B"] * 150)
    rule = choose_rule(SINGLE_LABEL, probs, y, DeferralRequest(0.8), labels=list("abcde"), order_probs=probs,
                       order_y=y)
    rule["threshold"] = 0.7
    found = subgroup_figures(SINGLE_LABEL, y, probs, probs.argmax(1), {"site": list(site)}, resamples=200,
                             routed=routing(SINGLE_LABEL, probs, y, rule, list("abcde")))
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


def test_cv_checks_each_folds_rule_and_sets_on_its_own_test_fold(tiny_model, tmp_path):
    data = write_csv(tmp_path / "notes.csv", make_rows(30))
    out = tmp_path / "cv"
    result = runner.invoke(app, ["cv", "--method", "embeddings", "--data", str(data), "--model", tiny_model,
                                 "--output", str(out), "--folds", "3", "--workers", "1", "--precision", "fp32",
                                 "--calibration-size", "0.3", "--target-precision", "0.8"])
    assert result.exit_code == 0, result.output
    assert "Deferral at precision 80%" in result.output and "Label sets" in result.output
    report = json.loads((out / "cv.json").read_text())
    found = report["deferral"]
    folds = [json.loads((out / f"fold-{k}" / "metrics.json").read_text())["test"] for k in (1, 2, 3)]
    assert [f["threshold"] for f in found["folds"]] == [t["deferral"]["rule"]["threshold"] for t in folds]
    assert all(t["deferral"]["rule"]["n_calibration"] > 0 for t in folds)
    assert found["n"] == 90 and found["decided"] == sum(t["deferral"]["decided"] for t in folds)
    assert found["coverage"] == pytest.approx(found["decided"] / 90)
    if found["precision"] is not None:  # pooled: the right decisions of every fold over all decisions
        right = sum(t["deferral"]["precision"] * t["deferral"]["decided"] for t in folds if t["deferral"]["decided"])
        assert found["precision"] == pytest.approx(right / found["decided"])
        assert found["low"] <= found["precision"] <= found["high"]
    assert found["folds_at_target"] == sum(t["deferral"]["precision"] is not None and
                                           t["deferral"]["precision"] >= 0.8 for t in folds)
    row = next(r for r in report["sets"] if r["score"] == "lac" and not r["by_class"] and r["level"] == 0.9)
    per_fold = [next(r for r in t["sets"]["rows"] if r["score"] == "lac" and not r["by_class"] and r["level"] == 0.9)
                for t in folds]
    sizes = [t["sets"]["n_test"] for t in folds]
    assert row["coverage"] == pytest.approx(sum(r["coverage"] * n for r, n in zip(per_fold, sizes)) / sum(sizes))
    assert row["worst_fold"] == min(r["coverage"] for r in per_fold)
    assert SECRET not in (out / "cv.md").read_text() and SECRET not in result.output


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
