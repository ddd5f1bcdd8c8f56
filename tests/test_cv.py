"""Cross-validation: folds that partition the rows, grouped folds and splits that never split a patient, the
`medclf cv` command end to end, and its refusals."""

import json
from collections import Counter

import pandas as pd
import pytest
from conftest import SECRET, make_rows, write_csv
from typer.testing import CliRunner

from medclf import MedclfError, TrainConfig
from medclf.cli.main import app
from medclf.training.cv import mean_interval
from medclf.training.splits import kfold_indices, prepare_splits

runner = CliRunner()


def grouped_rows(n_per_class=20, per_patient=3):
    rows = make_rows(n_per_class)
    for i, row in enumerate(rows):
        row["patient"] = f"p{i // per_patient}"
    return rows


@pytest.fixture(scope="module")
def grouped_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("cv") / "notes.csv", grouped_rows())


def test_folds_partition_the_rows_and_keep_class_shares():
    labels = ["a"] * 30 + ["b"] * 15 + ["c"] * 5
    pairs = kfold_indices(labels, folds=5, seed=0)
    held = [i for _, fold in pairs for i in fold]
    assert sorted(held) == list(range(50))
    for rest, fold in pairs:
        assert sorted(rest + fold) == list(range(50))
        assert Counter(labels[i] for i in fold) == {"a": 6, "b": 3, "c": 1}


def test_grouped_folds_never_split_a_group():
    rows = grouped_rows()
    labels, groups = [r["label"] for r in rows], [r["patient"] for r in rows]
    for rest, fold in kfold_indices(labels, folds=4, seed=1, groups=groups):
        assert not {groups[i] for i in rest} & {groups[i] for i in fold}
    multi = [(lab,) if i % 3 else (lab, "urgent") for i, lab in enumerate(labels)]
    for rest, fold in kfold_indices(multi, folds=4, seed=1, groups=groups):
        assert not {groups[i] for i in rest} & {groups[i] for i in fold}


def test_fold_errors_name_the_fix():
    with pytest.raises(MedclfError, match="fewer than 5 folds"):
        kfold_indices(["a", "a", "b", "b", "a", "b"], folds=5, seed=0)
    with pytest.raises(MedclfError, match="2 groups, fewer than 3 folds"):
        kfold_indices(["a", "b"] * 6, folds=3, seed=0, groups=["x"] * 6 + ["y"] * 6)
    with pytest.raises(MedclfError, match="at least 2"):
        kfold_indices(["a", "b"] * 6, folds=1, seed=0)


def test_train_with_a_group_column_keeps_each_patient_on_one_side(grouped_csv):
    splits = prepare_splits(TrainConfig(data=str(grouped_csv), group_column="patient"))
    train, val, test = ({*part.groups} for part in (splits.train, splits.val, splits.test))
    assert not train & test and not train & val and not val & test
    assert "grouped by patient" in splits.how
    with pytest.raises(MedclfError, match="Group column 'visit' is not in"):
        prepare_splits(TrainConfig(data=str(grouped_csv), group_column="visit"))


def test_mean_interval_is_the_t_interval():
    got = mean_interval([0.5, 0.6, 0.7])
    assert got["mean"] == pytest.approx(0.6) and got["sd"] == pytest.approx(0.1)
    assert got["high"] - got["mean"] == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    wide = mean_interval([0.6, 1.0])  # t(0.975, 1) = 12.7: the interval is cut at the ends of [0, 1]
    assert wide["high"] == 1.0 and wide["low"] == 0.0


def test_cv_through_the_cli(tmp_path, tiny_model, grouped_csv):
    out = tmp_path / "cv"
    result = runner.invoke(app, ["cv", "--data", str(grouped_csv), "--model", tiny_model, "--output", str(out),
                                 "--folds", "3", "--group-column", "patient", "--max-steps", "2", "--max-length", "32",
                                 "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "95% interval" in result.stdout and SECRET not in result.output
    report = json.loads((out / "cv.json").read_text())
    assert [row["fold"] for row in report["rows"]] == [1, 2, 3] and report["grouped_by"] == "patient"
    assert report["workers"] == 2
    for key in ("accuracy", "macro_f1"):
        s = report["summary"][key]
        assert s["low"] <= s["mean"] <= s["high"]
        assert s["mean"] == pytest.approx(sum(row[key] for row in report["rows"]) / 3)
    # every row tested exactly once, and each patient's rows in one fold only
    table = pd.read_csv(grouped_csv)
    tested = [pd.read_csv(out / f"fold-{k}" / "predictions_test.csv")["row"].tolist() for k in (1, 2, 3)]
    assert sorted(r for rows in tested for r in rows) == list(range(len(table)))
    patients = [set(table.loc[rows, "patient"]) for rows in tested]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert json.loads((out / "fold-1" / "metrics.json").read_text())["data"]["how"].startswith("fold 1 of 3")
    assert (out / "cv.md").read_text().count("\n| ") >= 5


@pytest.mark.parametrize("extra, message", [
    (["--folds", "1"], "--folds must be a whole number of at least 2"),
    (["--folds", "30", "--group-column", "patient"], "groups, fewer than 30 folds"),
    (["--test-data", "x.csv"], "--test-data does not apply"),
])
def test_cv_refusals_exit_2(tmp_path, tiny_model, grouped_csv, extra, message):
    result = runner.invoke(app, ["cv", "--data", str(grouped_csv), "--model", tiny_model, "--output",
                                 str(tmp_path / "cv"), *extra])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "cv").exists()


def test_folds_in_parallel_processes_give_the_same_figures_as_one_after_another(tmp_path, tiny_model, grouped_csv):
    from medclf.training.cv import cross_validate

    config = TrainConfig(data=str(grouped_csv), model=tiny_model, max_steps=2, max_length=32, precision="fp32")
    one = cross_validate(TrainConfig(**{**config.to_dict(), "output": str(tmp_path / "a")}), folds=2, workers=1)
    two = cross_validate(TrainConfig(**{**config.to_dict(), "output": str(tmp_path / "b")}), folds=2, workers=2)
    for a, b in zip(one.folds, two.folds):
        assert (a["n_train"], a["n_test"]) == (b["n_train"], b["n_test"])
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=0.05)  # 1 vs 2 threads: float order may differ
