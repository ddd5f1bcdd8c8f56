"""Beyond one machine, as a cluster runs it, on loopback: a two-node `torchrun` (c10d rendezvous, one process a node)
writes one run, by global rank 0, equal to the two-process run on one node; `medclf predict --engine spark` against a
standalone Spark master and worker started from pyspark's own `spark-class` ships the run to the worker and gives
TextClassifier's labels. Marked `cluster`: not part of the suite (each starts several processes and JVMs), run by
.ci/run after it (`python3 -m pytest -m cluster`)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import SECRET

pytestmark = pytest.mark.cluster

TRAIN = ["--batch-size", "4", "--epochs", "3", "--lr", "1e-3", "--precision", "fp32", "--max-length", "32",
         "--few-shot", "off"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_nodes_write_one_run_equal_to_two_processes_on_one_node(tmp_path, tiny_model, small_csv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "two-nodes"
    port = free_port()
    nodes = []
    for node in (0, 1):  # each "machine" starts its own torchrun agent in its own folder; the rendezvous pairs them
        cwd = tmp_path / f"node{node}"
        cwd.mkdir()
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "medclf-two-nodes",
             "--rdzv-conf", f"is_host={1 if node == 0 else 0}", "--local-addr", "127.0.0.1",
             "-m", "medclf", "-q", "train", "--data", str(small_csv), "--model", tiny_model, "--output", str(out), *TRAIN],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stderr[-3000:]
    assert sum(stdout.count("Run written to") for stdout, _ in outputs) == 1  # global rank 0 reports, once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node0", "node1", "two-nodes"]  # no staging folders left
    assert [list((tmp_path / f"node{n}").iterdir()) for n in (0, 1)] == [[], []]  # nothing written where a node ran

    one_node = tmp_path / "one-node"
    proc = subprocess.run([sys.executable, "-m", "medclf", "-q", "train", "--data", str(small_csv), "--model", tiny_model,
                           "--output", str(one_node), "--num-processes", "2", *TRAIN],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = (json.loads((run / "metrics.json").read_text()) for run in (out, one_node))
    assert json.loads((out / "train_config.json").read_text())["run"]["processes"]["count"] == 2
    assert two["timing"]["optimizer_steps"] == one["timing"]["optimizer_steps"] == 18
    # the same two ranks, shards and seeds: the same run, up to float summation order in the all-reduce
    for a, b in zip(two["history"], one["history"], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
    assert two["test"]["loss"] == pytest.approx(one["test"]["loss"], abs=1e-4)
    assert two["test"]["accuracy"] == one["test"]["accuracy"]
    predicted = [pd.read_csv(run / "predictions_test.csv").sort_values("row")["predicted"].tolist() for run in (out, one_node)]
    assert predicted[0] == predicted[1]


# ---------------------------------------------------------------- a standalone Spark cluster


def _wait_for(predicate, what: str, logs: list[Path], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.5)
    tails = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-1500:]}" for log in logs if log.exists())
    raise AssertionError(f"{what} did not come up in {timeout:.0f} s\n{tails}")


def _master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    """A standalone master and one worker (2 cores, 2 GiB) on 127.0.0.1, started from pyspark's bin/spark-class."""
    pyspark = pytest.importorskip("pyspark", reason="pyspark is an optional extra: pip install 'medclf[spark]'")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java (a JRE); .ci/run installs Debian's default-jre-headless")
    home = Path(pyspark.__file__).parent
    root = tmp_path_factory.mktemp("spark-cluster")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOCAL_DIRS": str(root / "local"), "HF_HUB_OFFLINE": "1"}
    port, ui = free_port(), free_port()
    logs = [root / "master.log", root / "worker.log"]
    spark_class = str(home / "bin" / "spark-class")
    procs = []
    try:
        with open(logs[0], "w") as log:
            procs.append(subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                           "--port", str(port), "--webui-port", str(ui)], stdout=log, stderr=log, env=env))
        _wait_for(lambda: _master_state(ui)["status"] == "ALIVE", "the Spark master", logs)
        with open(logs[1], "w") as log:
            procs.append(subprocess.Popen([spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                           "--cores", "2", "--memory", "2g", "--work-dir", str(root / "work"),
                                           "--webui-port", str(free_port()), f"spark://127.0.0.1:{port}"],
                                          stdout=log, stderr=log, env=env))
        _wait_for(lambda: _master_state(ui)["aliveworkers"] == 1, "the Spark worker", logs)
        yield {"url": f"spark://127.0.0.1:{port}", "root": root, "env": env}
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_predict_on_a_standalone_cluster_ships_the_run_to_the_worker(spark_cluster, trained_run, small_csv, tmp_path):
    from medclf import TextClassifier

    out = tmp_path / "scored.parquet"
    proc = subprocess.run([sys.executable, "-m", "medclf", "predict", str(trained_run), "--engine", "spark",
                           "--spark-master", spark_cluster["url"], "--input", str(small_csv), "--output", str(out)],
                          capture_output=True, text=True, timeout=600, env=spark_cluster["env"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_parquet(out)
    frame = pd.read_csv(small_csv)
    assert len(table) == 60 and "text" not in table.columns
    clf = TextClassifier.load(trained_run)
    expected = dict(zip(frame["note_id"], clf.predict(frame["text"].tolist()), strict=True))
    assert [expected[note] for note in table["note_id"]] == table["label"].tolist()

    # the executor ran on the worker and fetched its own copy of the run from the driver (SparkContext.addArchive):
    # an executor's SparkFiles root is its working folder under the worker's --work-dir
    executor_dirs = [d for d in (spark_cluster["root"] / "work").glob("app-*/*") if (d / "stderr").exists()]
    assert executor_dirs, "no executor ran on the worker"
    original = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*") if p.is_file()}
    copies = [c for d in executor_dirs for c in d.glob(f"{trained_run.name}-*.zip") if c.is_dir()]
    assert copies, f"no executor unpacked the run: {[sorted(p.name for p in d.iterdir()) for d in executor_dirs]}"
    assert {p.relative_to(copies[0]).as_posix() for p in copies[0].rglob("*") if p.is_file()} == original
    for path in [*spark_cluster["root"].rglob("*"), *tmp_path.rglob("*")]:  # no text in any log, on either side
        if path.is_file() and path.suffix not in (".parquet", ".crc", ".bin", ".safetensors", ".onnx") and "local" not in path.parts:
            assert SECRET not in path.read_text(errors="ignore"), path
    assert SECRET not in proc.stdout + proc.stderr
