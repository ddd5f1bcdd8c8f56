"""Performance by subgroup: each slice's figures equal those of its rows alone, with intervals and the gap to the whole
part; rare values are folded into '(other)' and never written; small slices are named, not judged; train, evaluate,
the report, the card, `medclf runs` and bad input, end to end through the CLI."""

import json
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import SECRET, make_rows, tracked_metrics, write_csv
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.core.calibration import reliability
from medclf.core.subgroups import OTHER, fold_rare, subgroup_figures, subgroup_lines, worse_slices
from medclf.core.tasks import MULTI_LABEL, SINGLE_LABEL

runner = CliRunner()
RARE_SITE = "ZEBRA-SITE-0042"
"""A slice value seen 3 times: it could single out a patient, so it must appear in no output."""


def _scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.5
    return y, SINGLE_LABEL.probabilities(logits)


def test_each_slice_has_the_figures_of_its_own_rows_with_an_interval_and_the_gap():
    y, probs = _scores(400)
    site = ["A"] * 200 + ["B"] * 150 + ["C"] * 45 + ["rare"] * 5
    result = subgroup_figures(SINGLE_LABEL, y, probs, probs.argmax(1), {"site": site}, resamples=300)
    rows = {row["value"]: row for row in result["columns"]["site"]}
    assert list(rows) == ["A", "B", "C", OTHER] and rows[OTHER]["n"] == 5 and not rows[OTHER]["judged"]
    assert "fewer than 30" in rows[OTHER]["reason"] and "figures" not in rows[OTHER]
    whole = SINGLE_LABEL.metrics(y, probs, ["a", "b", "c"])
    assert result["overall"]["accuracy"] == pytest.approx(whole["accuracy"])
    assert result["overall"]["auc"] == pytest.approx(whole["roc_auc_ovr_macro"])
    for value in ("A", "B", "C"):
        idx = np.array(site) == value
        alone = SINGLE_LABEL.metrics(y[idx], probs[idx], ["a", "b", "c"])
        row = rows[value]
        assert row["judged"] and row["n"] == idx.sum()
        assert row["figures"]["accuracy"] == pytest.approx(alone["accuracy"])
        assert row["figures"]["macro_f1"] == pytest.approx(alone["macro_f1"])
        assert row["figures"]["auc"] == pytest.approx(alone["roc_auc_ovr_macro"])
        assert row["figures"]["ece"] == pytest.approx(reliability(probs[idx], y[idx], SINGLE_LABEL)["ece"])
        assert row["gap"]["macro_f1"] == pytest.approx(alone["macro_f1"] - whole["macro_f1"])
        for key in ("accuracy", "macro_f1", "auc"):
            band = row["intervals"][key]
            assert band["low"] <= row["figures"][key] <= band["high"] and band["high"] - band["low"] > 0
    # a smaller slice has a wider interval
    width = {v: rows[v]["intervals"]["accuracy"]["high"] - rows[v]["intervals"]["accuracy"]["low"] for v in ("A", "C")}
    assert width["C"] > width["A"]
    assert "folded into '(other)'" in result["rule"] and "fewer than 30 rows" in result["rule"]


def test_a_slice_where_the_model_fails_is_named_as_worse():
    y, probs = _scores(300, seed=1)
    site = ["good"] * 240 + ["bad"] * 60
    probs[240:] = np.roll(probs[240:], 1, axis=1)  # the 'bad' site's predictions are wrong
    result = subgroup_figures(SINGLE_LABEL, y, probs, probs.argmax(1), {"site": site}, resamples=300)
    worse = worse_slices(result)
    assert len(worse) == 1 and worse[0].startswith("site = bad ")
    table = "\n".join(subgroup_lines(result))
    assert "| bad | 60 |" in table and "| all | 300 |" in table


def test_rare_values_are_folded_before_anything_is_computed():
    assert fold_rare(["a"] * 10 + ["b"] * 9 + ["c"], 10) == ["a"] * 10 + [OTHER] * 10
    y, probs = _scores(100)
    result = subgroup_figures(SINGLE_LABEL, y, probs, probs.argmax(1),
                              {"site": ["x"] * 95 + [RARE_SITE] * 5}, min_count=10, min_rows=5, resamples=100)
    assert RARE_SITE not in json.dumps(result)
    assert [row["value"] for row in result["columns"]["site"]] == ["x", OTHER]


def test_multi_label_slices_give_micro_and_macro_f1():
    rng = np.random.default_rng(2)
    y = (rng.random((200, 3)) < 0.3).astype(float)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(200, 3)) + 3 * (y - 0.5))))
    result = subgroup_figures(MULTI_LABEL, y, probs, probs >= 0.5, {"unit": ["icu", "ward"] * 100}, resamples=200)
    assert result["keys"] == ["micro_f1", "macro_f1", "ece", "auc"]
    idx = np.arange(200) % 2 == 0
    alone = MULTI_LABEL.metrics(y[idx], probs[idx], list("abc"), np.full(3, 0.5))
    icu = result["columns"]["unit"][0]
    assert icu["value"] == "icu" and icu["figures"]["micro_f1"] == pytest.approx(alone["micro_f1"])
    assert icu["figures"]["auc"] == pytest.approx(alone["roc_auc_macro"])


@pytest.fixture(scope="module")
def sliced_csv(tmp_path_factory):
    """600 rows with a site (A, B common; C rare enough to be too small; RARE_SITE 3 times) and a sex column."""
    rng = random.Random(5)
    rows = make_rows(200, seed=5)
    for i, row in enumerate(rows):
        row["site"] = RARE_SITE if i < 3 else rng.choices(["A", "B", "C"], weights=[55, 38, 7])[0]
        row["sex"] = rng.choice(["F", "M", ""])
    return write_csv(tmp_path_factory.mktemp("sliced") / "notes.csv", rows)


@pytest.fixture(scope="module")
def sliced_run(tmp_path_factory, tiny_model, sliced_csv):
    out = tmp_path_factory.mktemp("sliced-run") / "run"
    proc = subprocess.run([sys.executable, "-m", "medclf", "train", "--method", "embeddings", "--data", str(sliced_csv),
                           "--model", tiny_model, "--output", str(out), "--precision", "fp32",
                           "--slice-columns", "site,sex"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def test_train_reports_by_subgroup_in_metrics_report_card_and_runs(sliced_run):
    out, printed = sliced_run
    test = json.loads((out / "metrics.json").read_text())["test"]
    groups = test["subgroups"]
    assert list(groups["columns"]) == ["site", "sex"] and groups["min_count"] == 10
    site = {row["value"]: row for row in groups["columns"]["site"]}
    assert {"A", "B"} <= set(site) and sum(row["n"] for row in site.values()) == test["n"]
    assert all(site[v]["judged"] and site[v]["intervals"]["macro_f1"] for v in ("A", "B"))
    assert {row["value"] for row in groups["columns"]["sex"]} <= {"F", "M", "(missing)", OTHER}
    report = (out / "report.md").read_text()
    assert "## Performance by subgroup" in report and "(subgroups.png)" in report and (out / "subgroups.png").is_file()
    card = (out / "model" / "README.md").read_text()
    assert "## Performance by subgroup" in card and "| site | n |" in card
    runs = runner.invoke(app, ["runs", str(out.parent)])
    assert runs.exit_code == 0 and "worst subgroup" in runs.output
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["config"]["slice_columns"] == ["site", "sex"]
    for path in out.rglob("*"):  # neither the text nor the rare site, in any file of the run, nor on the console
        if path.is_file() and path.suffix not in (".safetensors", ".png", ".onnx", ".bin"):
            content = path.read_text(errors="ignore")
            assert SECRET not in content and RARE_SITE not in content, path
    assert SECRET not in printed and RARE_SITE not in printed


def test_evaluate_reports_by_subgroup_too(sliced_run, sliced_csv, tmp_path):
    out, _ = sliced_run
    written = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", str(out), "--data", str(sliced_csv), "--slice-columns", "site",
                                 "--slice-min-count", "5", "--output", str(written)])
    assert result.exit_code == 0, result.output
    groups = json.loads(written.read_text())["subgroups"]
    assert groups["min_count"] == 5 and [c for c in groups["columns"]] == ["site"]
    assert "| site | n |" in result.output and RARE_SITE not in result.output + written.read_text()
    assert sum(row["n"] for row in groups["columns"]["site"]) == len(pd.read_csv(sliced_csv))


@pytest.mark.parametrize(("args", "named"), [
    (["--slice-columns", "ward"], "Slice column 'ward' is not in"),
    (["--slice-columns", "empty"], "Slice column 'empty'"),
    (["--slice-columns", "text"], "is a text or label column"),
    (["--slice-columns", "site,"], "one is empty"),
    (["--slice-min-count", "0"], "slice_min_count must be a positive integer"),
])
def test_bad_slice_options_exit_2_with_one_sentence(args, named, tiny_model, tmp_path):
    rows = make_rows(10)
    for row in rows:
        row["site"], row["empty"] = "A", ""
    data = write_csv(tmp_path / "d.csv", rows)
    result = runner.invoke(app, ["train", "--method", "embeddings", "--data", str(data), "--model", tiny_model,
                                 "--output", str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output and SECRET not in result.output
    assert not (tmp_path / "run").exists()


def test_cv_reports_by_subgroup_on_the_out_of_fold_predictions(sliced_csv, tiny_model, tmp_path):
    out = tmp_path / "cv"
    result = runner.invoke(app, ["cv", "--method", "embeddings", "--data", str(sliced_csv), "--model", tiny_model,
                                 "--output", str(out), "--folds", "2", "--workers", "1", "--precision", "fp32",
                                 "--slice-columns", "site"])
    assert result.exit_code == 0, result.output
    groups = json.loads((out / "cv.json").read_text())["subgroups"]
    site = {row["value"]: row for row in groups["columns"]["site"]}
    assert sum(row["n"] for row in site.values()) == 600 and site["A"]["judged"] and site["C"]["judged"]
    assert "By subgroup, on every row's out-of-fold prediction" in (out / "cv.md").read_text()
    assert RARE_SITE not in (out / "cv.json").read_text() + result.output
    assert "subgroups" in json.loads((out / "fold-1" / "metrics.json").read_text())["test"]  # each fold's own too


def test_mlflow_gets_each_judged_slices_figures(sliced_run, tmp_path, monkeypatch):
    from medclf.run.tracking import metric_name

    out, _ = sliced_run
    logged, store = tracked_metrics(out, tmp_path, monkeypatch)
    site = {row["value"]: row for row in json.loads((out / "metrics.json").read_text())["test"]["subgroups"]["columns"]["site"]}
    assert logged["test_slice.site.A.macro_f1"] == pytest.approx(site["A"]["figures"]["macro_f1"])
    assert not any(name.startswith(f"test_slice.site.{metric_name(OTHER)}") for name in logged)  # not judged
    assert metric_name("test_slice.sex.(missing).auc") == "test_slice.sex._missing_.auc"
    assert RARE_SITE.encode() not in store.read_bytes()


def test_a_multi_label_run_reports_by_subgroup_too(tiny_model, tmp_path):
    rng = random.Random(3)
    rows = make_rows(100, seed=3)
    for row in rows:
        row["label"] = row["label"] + ("|urgent" if rng.random() < 0.4 else "")
        row["unit"] = rng.choice(["icu", "ward"])
    data = write_csv(tmp_path / "ml.csv", rows)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--method", "embeddings", "--multi-label", "--data", str(data), "--model",
                                 tiny_model, "--output", str(out), "--precision", "fp32", "--slice-columns", "unit"])
    assert result.exit_code == 0, result.output
    groups = json.loads((out / "metrics.json").read_text())["test"]["subgroups"]
    assert groups["keys"] == ["micro_f1", "macro_f1", "ece", "auc"]
    assert {row["value"] for row in groups["columns"]["unit"]} == {"icu", "ward"}
    for text in ((out / "report.md").read_text(), (out / "model" / "README.md").read_text()):
        assert "## Performance by subgroup" in text and "micro-F1 (95% interval)" in text


def test_ece_is_set_against_what_a_calibrated_model_shows_on_as_many_rows():
    from medclf.core.subgroups import calibrated_ece_range

    rng = np.random.default_rng(4)
    n = 400
    probs = rng.dirichlet([2, 1, 1], n)
    calibrated = np.array([rng.choice(3, p=row) for row in probs])  # the truth drawn with the stated probabilities
    overconfident = SINGLE_LABEL.probabilities(np.log(probs) * 3)  # the same ranking, sharper than the truth
    site = ["a"] * 200 + ["b"] * 200
    fair = subgroup_figures(SINGLE_LABEL, calibrated, probs, probs.argmax(1), {"site": site}, resamples=400)
    sharp = subgroup_figures(SINGLE_LABEL, calibrated, overconfident, overconfident.argmax(1), {"site": site},
                             resamples=400)
    for row in fair["columns"]["site"]:  # a calibrated model's ECE is not above the range (chance alone)
        assert row["figures"]["ece"] <= row["intervals"]["ece"]["high"]
    for row in sharp["columns"]["site"]:  # an overconfident one's lies above it
        assert row["figures"]["ece"] > row["intervals"]["ece"]["high"]
    low, high = calibrated_ece_range(SINGLE_LABEL, probs[:50], draws=400, seed=0, level=0.95)
    low_big, high_big = calibrated_ece_range(SINGLE_LABEL, probs, draws=400, seed=0, level=0.95)
    assert high - low > high_big - low_big and low > low_big  # fewer rows, a higher and wider chance ECE
    assert "consistency resamples" in fair["method"]
