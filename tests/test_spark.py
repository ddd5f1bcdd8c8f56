"""medclf on Spark (local[2]): the pandas UDF gives TextClassifier's labels and probabilities, and
`medclf predict --engine spark` writes a Spark output folder under its final name only when done."""

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import SECRET, make_rows, write_csv
from typer.testing import CliRunner

from medclf import MedclfError, TextClassifier
from medclf.cli.main import app
from medclf.config import LoadOptions

pyspark = pytest.importorskip("pyspark", reason="pyspark is an optional extra: pip install 'medclf[spark]'")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java (a JRE); .ci/run installs Debian's default-jre-headless", allow_module_level=True)

runner = CliRunner()


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("medclf-tests")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
    yield session
    session.stop()


def test_the_udf_gives_the_classifiers_labels_and_probabilities(spark, trained_run, small_csv):
    from medclf.inference.spark import add_predictions, prob_column

    frame = pd.concat([pd.read_csv(small_csv)] * 5, ignore_index=True)  # 300 rows
    scored = add_predictions(spark.createDataFrame(frame).repartition(3), trained_run, text_column="text").toPandas()
    assert len(scored) == 300 and (scored["input_label"] == scored["input_label"]).all()  # the true label kept
    scored = scored.drop_duplicates("note_id").set_index("note_id").loc[frame["note_id"].drop_duplicates()]
    clf = TextClassifier.load(trained_run)
    texts = pd.read_csv(small_csv)["text"].tolist()
    assert scored["label"].tolist() == clf.predict(texts)
    probs = scored[[prob_column(lab) for lab in clf.labels]].to_numpy()
    assert np.abs(probs - clf.predict_proba(texts)).max() < 1e-5
    assert np.allclose(scored["score"], probs.max(axis=1))


def test_a_shipped_run_is_loaded_from_the_executors_copy_not_the_drivers_folder(spark, trained_run, small_csv, tmp_path):
    from medclf.inference.spark import predict_udf, ship_run

    run = tmp_path / "notes"
    shutil.copytree(trained_run, run)
    name = ship_run(spark, run)
    udf = predict_udf(run, shipped_as=name)
    run.rename(tmp_path / "moved")  # the driver's folder is gone: only the shipped copy can serve the UDF
    frame = pd.read_csv(small_csv)
    got = spark.createDataFrame(frame[["note_id", "text"]]).withColumn("p", udf("text")).select("note_id", "p.label")
    got = got.toPandas().set_index("note_id").loc[frame["note_id"]]
    assert name.startswith("notes-") and got["label"].tolist() == TextClassifier.load(trained_run).predict(frame["text"].tolist())
    with pytest.raises(MedclfError, match="not a medclf run directory"):
        ship_run(spark, tmp_path)


def test_predict_engine_spark_writes_a_folder_of_parts(trained_run, small_csv, tmp_path, spark):
    out = tmp_path / "scored.parquet"
    result = runner.invoke(app, ["predict", str(trained_run), "--engine", "spark", "--spark-master", "local[2]",
                                 "--input", str(small_csv), "--output", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert len(table) == 60 and "text" not in table.columns and SECRET not in table.to_csv()
    assert set(table["label"]) <= {"cardio", "derm", "neuro"} and not (tmp_path / ".scored.parquet.partial").exists()
    result = runner.invoke(app, ["predict", str(trained_run), "--engine", "spark", "--input", str(small_csv),
                                 "--output", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output


def test_without_pyspark_the_option_names_the_install(monkeypatch, trained_run):
    import builtins

    real_import = builtins.__import__

    def no_pyspark(name, *args, **kwargs):
        if name == "pyspark" or name.startswith("pyspark."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyspark)
    from medclf.inference.spark import predict_udf

    with pytest.raises(MedclfError, match=r"pip install 'medclf\[spark\]'"):
        predict_udf(trained_run)


@pytest.mark.parametrize("args, named", [
    (["--top-k", "2"], "--top-k"), (["--drop-empty"], "--drop-empty"), (["--resume"], "--resume"),
    (["--chunk-rows", "50", "--top-k", "1"], "--top-k, --chunk-rows"),
])
def test_options_spark_cannot_honour_are_refused_not_ignored(trained_run, small_csv, tmp_path, args, named):
    result = runner.invoke(app, ["predict", str(trained_run), "--engine", "spark", "--input", str(small_csv),
                                 "--output", str(tmp_path / "o.parquet"), *args])
    assert result.exit_code == 2 and f"--engine spark does not take {named}" in result.stderr
    assert not (tmp_path / "o.parquet").exists()


def test_the_udf_reads_long_texts_as_asked(spark, trained_run):
    from medclf.inference.spark import add_predictions, prob_column

    text = " ".join(["patient seen today history reviewed"] * 80) + " chest pain troponin"
    df = spark.createDataFrame(pd.DataFrame({"text": [text]}))
    for mode in ("chunk", "truncate"):
        got = add_predictions(df, trained_run, options=LoadOptions(long_text=mode)).toPandas()
        clf = TextClassifier.load(trained_run, long_text=mode)
        probs = got[[prob_column(lab) for lab in clf.labels]].to_numpy()
        assert np.abs(probs - clf.predict_proba([text])).max() < 1e-5
    with pytest.raises(MedclfError, match="long_text must be one of"):
        add_predictions(df, trained_run, options=LoadOptions(long_text="windows"))


def test_a_run_with_a_deferral_rule_marks_deferred_texts_on_spark(spark, tiny_model, tmp_path):
    from medclf.inference.spark import add_predictions

    data = write_csv(tmp_path / "notes.csv", make_rows(40))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--method", "embeddings", "--data", str(data), "--model", tiny_model,
                                 "--output", str(out), "--precision", "fp32", "--calibration-size", "0.3",
                                 "--target-precision", "0.8"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(data)
    scored = add_predictions(spark.createDataFrame(frame), out, text_column="text").toPandas()
    routed = TextClassifier.load(out).predict_or_defer(frame["text"].tolist())
    assert scored["deferred"].tolist() == [r.deferred for r in routed]
