"""--track mlflow: a real local MLflow store (and, marked slow, a real `mlflow server` on loopback) read back with MlflowClient:
every option as a parameter, the per-epoch figures, the test figures, the report files; nothing with text."""

import json
import subprocess
import sys

import pytest
from conftest import SECRET, free_port
from typer.testing import CliRunner

from medclf.cli.main import app

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

runner = CliRunner()


def only_run(uri, experiment="medclf"):
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, runs


def assert_no_text(folder):
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_train_logs_options_epochs_test_figures_and_reports_to_the_local_store(tmp_path, tiny_model, small_csv,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    result = runner.invoke(app, ["train", "--data", str(small_csv), "--model", tiny_model, "--output", "runs/a",
                                 "--epochs", "3", "--lr", "3e-3", "--batch-size", "8", "--few-shot", "off",
                                 "--track", "mlflow"])
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow's own default here (3.x: ./mlflow.db, artifacts in ./mlruns)
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlruns").is_dir()
    client, runs = only_run(uri)
    assert len(runs) == 1
    run = runs[0]
    config = json.loads((tmp_path / "runs/a/train_config.json").read_text())["config"]
    for key, value in config.items():  # every option, as given
        assert key in run.data.params, key
        assert run.data.params[key] == (value if isinstance(value, str) else json.dumps(value))
    assert run.data.params["run.data_sha256.data"] and run.data.tags["medclf.kind"] == "train"
    history = client.get_metric_history(run.info.run_id, "val_macro_f1")
    assert [m.step for m in history] == [1, 2, 3]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3
    metrics = json.loads((tmp_path / "runs/a/metrics.json").read_text())
    assert run.data.metrics["test_macro_f1"] == pytest.approx(metrics["test"]["macro_f1"])
    assert run.data.metrics["test_macro_f1_low"] <= run.data.metrics["test_macro_f1"] <= run.data.metrics["test_macro_f1_high"]
    # the MLflow run spans the training job, not the moment it was logged
    assert abs((run.info.end_time - run.info.start_time) / 1000 - metrics["timing"]["total_seconds"]) < 1.0
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.json", "train_config.json", "model"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/README.md"}
    assert_no_text(tmp_path / "mlruns")
    assert SECRET.encode() not in (tmp_path / "mlflow.db").read_bytes()


def test_cv_is_one_run_with_the_folds_as_steps(tmp_path, tiny_model, small_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the artifacts of a sqlite store go to ./mlruns
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "notes")
    result = runner.invoke(app, ["cv", "--data", str(small_csv), "--model", tiny_model, "--output", str(tmp_path / "cv"),
                                 "--folds", "2", "--max-steps", "2", "--max-length", "32", "--workers", "1",
                                 "--few-shot", "off", "--track", "mlflow"])
    assert result.exit_code == 0, result.output
    client, runs = only_run(uri, "notes")
    assert len(runs) == 1 and runs[0].data.tags["medclf.kind"] == "cv"  # the folds are not logged one by one
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "macro_f1")] == [1, 2]
    assert runs[0].data.params["folds"] == "2" and "macro_f1_mean" in runs[0].data.metrics
    assert_no_text(tmp_path / "mlruns")


def test_without_mlflow_track_says_how_to_install_before_training(tmp_path, tiny_model, small_csv, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = runner.invoke(app, ["train", "--data", str(small_csv), "--model", tiny_model, "--output",
                                 str(tmp_path / "a"), "--track", "mlflow"])
    assert result.exit_code == 2 and 'pip install "medclf[track]"' in result.output
    assert not (tmp_path / "a").exists()
    bad = runner.invoke(app, ["train", "--data", str(small_csv), "--track", "wandb"])
    assert bad.exit_code == 2 and "track must be one of none, mlflow" in bad.output


@pytest.mark.slow  # `mlflow server` takes 15-35 s to start on 2 cores: more than the suite can spend
def test_a_tracking_server_on_loopback_works_the_same(tmp_path, tiny_model, small_csv, monkeypatch):
    from conftest import wait_ready

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination",
         str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, server, timeout=90, path="/health")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
        result = runner.invoke(app, ["train", "--data", str(small_csv), "--model", tiny_model, "--output",
                                     str(tmp_path / "a"), "--method", "embeddings", "--track", "mlflow"])
        assert result.exit_code == 0, result.output
        client, runs = only_run(base)
        assert len(runs) == 1 and runs[0].data.params["method"] == "embeddings"
        assert "report.md" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
        assert_no_text(tmp_path / "artifacts")
    finally:
        server.terminate()
        server.wait(timeout=30)
