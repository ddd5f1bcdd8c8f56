"""The run report: bootstrap intervals, the TF-IDF reference, the plots, and a self-contained report.html."""

import json
import re

import numpy as np
import pytest
from conftest import SECRET

from medclf.core.metrics import bootstrap_intervals


def test_bootstrap_interval_of_perfect_predictions_is_a_point():
    y = np.array([0, 1, 2, 0, 1, 2])
    got = bootstrap_intervals(y, y, multi_label=False, resamples=200)
    assert got["accuracy"] == {"low": 1.0, "high": 1.0} and got["macro_f1"] == {"low": 1.0, "high": 1.0}


def test_bootstrap_intervals_cover_the_estimate_and_narrow_with_more_texts():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 2000):
        y = rng.integers(0, 3, n)
        pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, 3, n))
        got = bootstrap_intervals(y, pred, multi_label=False, resamples=300, seed=1)
        accuracy = (y == pred).mean()
        assert got["accuracy"]["low"] <= accuracy <= got["accuracy"]["high"]
        widths.append(got["accuracy"]["high"] - got["accuracy"]["low"])
    assert widths[1] < widths[0] / 3  # about 1/sqrt(20) as wide
    y = rng.random((300, 3)) < 0.4
    got = bootstrap_intervals(y, y ^ (rng.random((300, 3)) < 0.1), multi_label=True, resamples=200)
    assert set(got) >= {"micro_f1", "macro_f1", "subset_accuracy"} and got["micro_f1"]["low"] < got["micro_f1"]["high"]


def test_every_run_writes_the_report_files_with_intervals_and_the_baseline(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["intervals"]["level"] == 0.95 and "1000 resamples" in test["intervals"]["method"]
    assert test["intervals"]["accuracy"]["low"] <= test["accuracy"] <= test["intervals"]["accuracy"]["high"]
    assert 0 <= metrics["baseline_tfidf"]["macro_f1"] <= 1 and "accuracy" in metrics["baseline_tfidf"]
    assert metrics["data"]["truncation"]["train"]["tokens_p50"] > 0
    for name in ("confusion_matrix.png", "calibration.png", "training.png"):
        assert (trained_run / name).read_bytes()[:4] == b"\x89PNG", name
    report = (trained_run / "report.md").read_text()
    assert "95% interval" in report and "TF-IDF" in report and "training.png" in report and "Data SHA-256" in report


def test_report_html_is_self_contained(trained_run):
    page = (trained_run / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page and "<h2>Calibration</h2>" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3  # confusion, calibration, training
    # nothing is fetched: no http(s) reference, no script, no stylesheet link, every src inline
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    assert SECRET not in page


@pytest.mark.parametrize("name", ["report.md", "report.html", "metrics.json"])
def test_report_files_hold_no_text(trained_run, name):
    assert SECRET not in (trained_run / name).read_text()


def test_report_markdown_renders_as_commonmark_without_raw_html(tmp_path):
    from medclf.reporting.report import markdown_html

    (tmp_path / "plot.png").write_bytes(b"\x89PNG fake")
    page = markdown_html("# Run\n\n| class | note |\n|---|---|\n| a \\| b | *weak* and **strong** |\n\n"
                         "- one\n- [two](other.md)\n\n<script>alert(1)</script>\n\n![plot](plot.png)\n\n"
                         "![remote](https://example.org/x.png)\n", tmp_path, ["plot.png"])
    assert "<td>a | b</td>" in page  # an escaped pipe stays inside its cell
    assert "<em>weak</em>" in page and "<strong>strong</strong>" in page and "<li>one</li>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page  # raw HTML is shown, never run
    assert 'src="data:image/png;base64,' in page and "example.org" not in page  # only the run's images, inlined
