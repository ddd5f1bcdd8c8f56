"""The typed shapes of metrics.json and cv.json hold what runs really write, and cross-validation's out-of-fold
probabilities are its folds' own test predictions."""

import json
import typing

import numpy as np
import pandas as pd
import pytest

from medclf import TrainConfig
from medclf.core.figures import FIGURE_NAMES, CVReport, FigureKey, Figures, FoldRow, HistoryRow, RunMetrics, Timing
from medclf.core.tasks import MULTI_LABEL, SINGLE_LABEL


def keys_of(shape: type) -> set[str]:
    return set(typing.get_type_hints(shape))


def test_every_key_a_run_writes_is_declared(trained_run, embedding_run):
    for run in (trained_run, embedding_run):
        metrics = json.loads((run / "metrics.json").read_text())
        assert set(metrics) <= keys_of(RunMetrics)
        for part in ("test", "validation"):
            assert set(metrics[part]) <= keys_of(Figures), part
        assert set(metrics["timing"]) <= keys_of(Timing)
        assert all(set(row) <= keys_of(HistoryRow) for row in metrics["history"])


def test_every_headline_figure_has_a_name_and_a_declared_place():
    assert set(typing.get_args(FigureKey)) == set(FIGURE_NAMES)
    for task in (SINGLE_LABEL, MULTI_LABEL):
        assert set(task.headline_keys) <= keys_of(Figures) & keys_of(FoldRow)
        assert task.accuracy_key in task.headline_keys


@pytest.mark.parametrize("workers", [1, 2])
def test_out_of_fold_probabilities_are_each_folds_test_predictions(tmp_path, tiny_model, small_csv, workers):
    from medclf.training.cv import cross_validate

    config = TrainConfig(data=str(small_csv), model=tiny_model, max_steps=2, max_length=32, precision="fp32",
                         output=str(tmp_path / "cv"))
    result = cross_validate(config, folds=2, workers=workers)
    report: CVReport = json.loads((result.output / "cv.json").read_text())
    assert CVReport.__required_keys__ <= set(report) <= keys_of(CVReport)  # `subgroups` only with slice columns
    assert list(report["summary"]) == list(SINGLE_LABEL.headline_keys)
    assert all(set(row) <= keys_of(FoldRow) for row in report["rows"])
    where = {row: i for i, row in enumerate(result.rows)}
    seen = 0
    for k in (1, 2):
        frame = pd.read_csv(result.output / f"fold-{k}" / "predictions_test.csv", dtype={"label": str})
        mine = result.probs[[where[int(r)] for r in frame["row"]]]
        # the CSV keeps 6 decimals of the probabilities the fold's run computed
        np.testing.assert_allclose(mine, frame[[f"prob_{lab}" for lab in result.labels]].to_numpy(float), atol=1e-6)
        seen += len(frame)
    assert seen == len(result.rows) and np.allclose(result.probs.sum(axis=1), 1.0)
