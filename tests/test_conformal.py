"""Conformal label sets: the coverage guarantee holds over repeated calibration/test draws (overall, and per class
with by-class calibration), the quantile rule with few rows, never-empty sets; a run with a calibration part gives
sets through predict_set, `medclf predict --sets`, the HTTP API, metrics.json, the report and the card; bad options
and runs without a calibration part exit 2 with one sentence; no text in any output."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SECRET, make_rows, write_csv
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from medclf import TextClassifier, TrainConfig
from medclf.cli.main import app
from medclf.core.conformal import (
    ConformalSets,
    SetRequest,
    conformal_quantile,
    label_scores,
    set_figures,
    topk_baseline,
)
from medclf.errors import MedclfError
from medclf.serving.app import create_app
from medclf.serving.settings import ServeSettings

runner = CliRunner()


def _calibrated(n: int, rng: np.random.Generator, k: int = 5, hard: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a calibrated model (each true label drawn from its row's probabilities); with `hard`, the
    model under-rates that class on its own rows (a class it is worse at: a third of the probability it should give)."""
    logits = rng.normal(scale=2.0, size=(n, k))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=p) for p in probs])
    if hard is not None:
        rows = y == hard
        probs[rows, hard] /= 3
        probs[rows] /= probs[rows].sum(axis=1, keepdims=True)
    return probs, y


def test_coverage_is_at_least_the_level_and_at_most_one_over_n_above_over_repeated_draws():
    rng = np.random.default_rng(0)
    probs, y = _calibrated(4000, rng)
    n_cal = 300
    for score in ("lac", "aps"):
        for level in (0.8, 0.9, 0.95):
            covered = []
            for _ in range(150):
                order = rng.permutation(len(y))
                cal, test = order[:n_cal], order[n_cal:]
                mask = ConformalSets(probs[cal], y[cal]).masks(probs[test], SetRequest(level, score))
                covered.append(mask[np.arange(len(test)), y[test]].mean())
            mean = float(np.mean(covered))
            assert level - 0.005 <= mean <= level + 1 / (n_cal + 1) + 0.01, (score, level, mean)
            spread = (level * (1 - level) / (n_cal + 2)) ** 0.5  # of one draw's coverage (a Beta of the rank)
            assert float(np.std(covered)) < 1.5 * spread and np.percentile(covered, 5) > level - 2 * spread


def test_by_class_calibration_gives_each_class_its_coverage_where_one_quantile_does_not():
    rng = np.random.default_rng(1)
    probs, y = _calibrated(6000, rng, hard=0)
    level, plain, by_class = 0.9, [], []
    for _ in range(60):
        order = rng.permutation(len(y))
        cal, test = order[:1500], order[1500:]
        sets = ConformalSets(probs[cal], y[cal])
        rows = test[y[test] == 0]
        for request, out in ((SetRequest(level, "lac"), plain), (SetRequest(level, "lac", by_class=True), by_class)):
            mask = sets.masks(probs[rows], request)
            out.append(mask[np.arange(len(rows)), 0].mean())
    assert np.mean(plain) < level - 0.05  # the unsure class is under-covered by one quantile for all
    assert np.mean(by_class) >= level - 0.01


def test_the_quantile_is_the_ceil_n_plus_one_rank_and_infinite_with_too_few_rows():
    scores = np.arange(1, 10) / 10  # 9 rows
    assert conformal_quantile(scores, 0.9) == pytest.approx(0.9)  # rank ceil(10 * 0.9) = 9
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.5)  # rank 5
    assert conformal_quantile(scores[:8], 0.9) == float("inf")  # rank 9 of 8
    probs = np.array([[0.7, 0.2, 0.1]] * 8)
    sets = ConformalSets(probs, np.zeros(8, dtype=int))
    request = SetRequest(0.95, "lac", by_class=True)
    assert sets.unbounded(request) == [0, 1, 2]  # no calibration row of classes 1, 2; 8 rows of class 0
    assert sets.sets(probs[:1], ["a", "b", "c"], request) == [["a", "b", "c"]]


def test_sets_are_never_empty_most_probable_first_and_aps_sets_are_a_top_prefix():
    rng = np.random.default_rng(2)
    probs, y = _calibrated(500, rng)
    sets = ConformalSets(probs[:250], y[:250])
    labels = list("abcde")
    for score in ("lac", "aps"):
        for level in (0.5, 0.9):
            found = sets.sets(probs[250:], labels, SetRequest(level, score))
            for row, labs in zip(probs[250:], found):
                assert labs and labs[0] == labels[int(row.argmax())]
                ranked = [labels[k] for k in np.argsort(-row, kind="stable")]
                assert labs == ranked[:len(labs)]  # both scores are monotone in the probability
    lac = label_scores(np.array([[0.6, 0.3, 0.1]]), "lac")
    aps = label_scores(np.array([[0.6, 0.3, 0.1]]), "aps")
    assert lac[0].tolist() == pytest.approx([0.4, 0.7, 0.9]) and aps[0].tolist() == pytest.approx([0.0, 0.6, 0.9])


def test_set_figures_report_coverage_with_its_interval_per_class_and_the_top_k_baseline():
    rng = np.random.default_rng(3)
    probs, y = _calibrated(1200, rng)
    labels = list("abcde")
    figures = set_figures(ConformalSets(probs[:400], y[:400]), probs[400:], y[400:], labels, precision="fp32")
    assert figures["n_calibration"] == 400 and figures["n_test"] == 800 and len(figures["rows"]) == 2 * 2 * 3
    for row in figures["rows"]:
        mask = ConformalSets(probs[:400], y[:400]).masks(probs[400:], SetRequest(row["level"], row["score"],
                                                                                 row["by_class"]))
        assert row["coverage"] == pytest.approx(mask[np.arange(800), y[400:]].mean())
        assert row["mean_size"] == pytest.approx(mask.sum(axis=1).mean())
        assert row["low"] < row["coverage"] < row["high"] and sum(c["n"] for c in row["per_class"].values()) == 800
    for top in figures["top_k"]:
        ranks = (probs[:400] > probs[np.arange(400), y[:400]][:, None]).sum(axis=1)
        assert (ranks < top["k"]).mean() >= top["level"] and (top["k"] == 1 or (ranks < top["k"] - 1).mean() < top["level"])
    assert topk_baseline(ConformalSets(probs[:400], y[:400]), 0.999) <= 5


@pytest.mark.parametrize("kwargs, fix", [({"coverage": 1.2}, "between 0 and 1"), ({"coverage": 0}, "between 0 and 1"),
                                         ({"score": "raps"}, "lac, aps"), ({"by_class": "yes"}, "true or false")])
def test_a_bad_set_request_names_the_fix(kwargs, fix):
    with pytest.raises(MedclfError, match=fix):
        SetRequest(**kwargs)


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def set_run(tmp_path_factory, tiny_model):
    data = write_csv(tmp_path_factory.mktemp("sets") / "notes.csv", make_rows(40))
    out = tmp_path_factory.mktemp("sets-run") / "run"
    result = runner.invoke(app, ["train", "--method", "embeddings", "--data", str(data), "--model", tiny_model,
                                 "--output", str(out), "--precision", "fp32", "--calibration-size", "0.25"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    return out, data


def test_train_keeps_a_calibration_part_and_reports_the_sets(set_run):
    out, _ = set_run
    metrics = json.loads((out / "metrics.json").read_text())
    data, sets = metrics["data"], metrics["test"]["sets"]
    assert data["n_calibration"] == sets["n_calibration"] == 24  # 25% of the 96 rows left after the 20% test part
    assert data["n_train"] + data["n_val"] + data["n_calibration"] + data["n_test"] == 120
    assert sum(data["class_counts"]["calibration"].values()) == 24
    assert {(r["score"], r["by_class"], r["level"]) for r in sets["rows"]} == {
        (s, b, lv) for s in ("lac", "aps") for b in (False, True) for lv in (0.8, 0.9, 0.95)}
    frame = pd.read_csv(out / "predictions_calibration.csv")
    assert len(frame) == 24 and {"row", "label", "prob_cardio", "prob_derm", "prob_neuro"} <= set(frame.columns)
    report, card = (out / "report.md").read_text(), (out / "model" / "README.md").read_text()
    assert "## Label sets (conformal)" in report and "Clopper-Pearson" in report and "top-k" in report
    assert "## Label sets" in card and "predict_set" in card
    assert "calibration part" in json.loads((out / "train_config.json").read_text())["run"]["split"]
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".md", ".html", ".log"):
            assert SECRET not in path.read_text(encoding="utf-8", errors="ignore"), path


def test_predict_set_follows_sklearn_habits_and_matches_the_probabilities(set_run):
    out, _ = set_run
    clf = TextClassifier.load(out)
    texts = ["chest pain troponin ecg", "rash itchy plaques skin", "seizure headache tremor"]
    one = clf.predict_set(texts[0], coverage=0.8)
    many = clf.predict_set(texts, coverage=0.8, score="aps", by_class=True)
    assert isinstance(one, list) and all(isinstance(lab, str) for lab in one)
    assert len(many) == 3 and all(labs and set(labs) <= set(clf.labels) for labs in many)
    probs = clf.predict_proba(texts)
    assert many == clf.label_sets(probs, SetRequest(0.8, "aps", by_class=True))
    assert [labs[0] for labs in many] == clf.predict(texts)
    wide = clf.predict_set(texts, coverage=0.95)
    narrow = clf.predict_set(texts, coverage=0.5)
    assert all(set(n) <= set(w) for n, w in zip(narrow, wide))  # a higher coverage never gives a smaller set


def test_predict_sets_through_the_cli_writes_the_set_and_its_size(set_run, tmp_path):
    out, data = set_run
    target = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(out), "--input", str(data), "--output", str(target), "--sets", "0.9",
                                 "--set-score", "aps"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(target, keep_default_na=False)
    assert {"label_set", "set_size", "label", "score"} <= set(frame.columns) and len(frame) == 120
    assert all(s.split("|")[0] == lab and len(s.split("|")) == n
               for s, lab, n in zip(frame["label_set"], frame["label"], frame["set_size"]))
    assert SECRET not in target.read_text()
    lines = runner.invoke(app, ["predict", str(out), "chest pain ecg", "--sets", "0.8"])
    assert lines.exit_code == 0 and json.loads(lines.stdout.splitlines()[-1])["set"]


def test_the_http_api_gives_sets_on_request_and_a_422_without_a_calibration_part(set_run, trained_run):
    out, _ = set_run
    with TestClient(create_app(ServeSettings(run_dir=str(out)))) as c:
        plain = c.post("/v1/predict", json={"text": "chest pain ecg"}).json()
        assert "set" not in plain
        answer = c.post("/v1/predict", json={"texts": ["chest pain ecg", "rash skin"], "sets": 0.9,
                                              "set_score": "aps"}).json()["predictions"]
        assert all(p["set"] and p["set"][0] == p["label"] for p in answer)
        bad = c.post("/v1/predict", json={"text": "x", "sets": 0.9, "set_score": "nope"})
        assert bad.status_code == 422 and "lac, aps" in bad.text
    with TestClient(create_app(ServeSettings(run_dir=str(trained_run)))) as c:
        none = c.post("/v1/predict", json={"text": f"{SECRET} chest pain", "sets": 0.9})
        assert none.status_code == 422 and "--calibration-size" in none.text and SECRET not in none.text


def test_without_a_calibration_part_or_with_bad_options_predict_sets_exits_2_in_one_sentence(set_run, trained_run):
    out, _ = set_run
    for args, fix in (([str(trained_run), "x", "--sets", "0.9"], "--calibration-size"),
                      ([str(out), "x", "--sets", "1.5"], "between 0 and 1"),
                      ([str(out), "x", "--set-by-class"], "pass --sets"),
                      ([str(out), "x", "--sets", "0.9", "--set-score", "raps"], "lac, aps")):
        result = runner.invoke(app, ["predict", *args])
        assert result.exit_code == 2 and fix in result.output and "Traceback" not in result.output, result.output


def test_the_calibration_part_is_carved_only_where_asked_for():
    assert TrainConfig().calibration_share() == 0.0 and TrainConfig(target_precision=0.9).calibration_share() == 0.1
    assert TrainConfig(multi_label=True).calibration_share() == 0.0
    assert TrainConfig(calibration_size=0.2).calibration_share() == 0.2
    with pytest.raises(MedclfError, match="between 0 and 0.5"):
        TrainConfig(calibration_size=0.7)
    with pytest.raises(MedclfError, match="single-label"):
        TrainConfig(calibration_size=0.1, multi_label=True)
