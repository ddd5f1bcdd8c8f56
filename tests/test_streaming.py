"""predict over files of any size: chunked reading and writing with flat memory, the output appearing only
when complete, and --resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import SECRET, make_rows
from typer.testing import CliRunner

from medclf.cli.main import app

runner = CliRunner()
BIG = 40_000
"""Rows of the big file that a job is killed in and resumed from (short notes: that test is about the parts)."""
FAT = 20_000
"""Rows of the file whose memory is measured: notes of about 1 kB, 20 MB of text, which a reader that kept every row
would hold several times over (strings, Arrow buffers, token ids), and 10x the small file's rows."""
FILL = " " + "x" * 1000
"""1 kB that the tokenizer turns into one [UNK] at once (a word over its 100 characters): the test pays for memory, not
for tokenizing."""


def big_table(n: int, *, fat: bool = False) -> pd.DataFrame:
    base = make_rows(20)
    return pd.DataFrame({"note_id": [f"n{i}" for i in range(n)],
                         "text": [base[i % len(base)]["text"] + (FILL if fat else "") for i in range(n)]})


@pytest.fixture(scope="module")
def big_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "notes.parquet"
    big_table(BIG).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def fat_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("fat") / "notes.parquet"
    # row groups of 2,000 rows: Arrow reads Parquet a row group at a time, so a file written as one 20 MB row group
    # costs 20 MB however it is streamed (measured: +15-20 MiB); the property here is medclf's own streaming
    big_table(FAT, fat=True).to_parquet(path, index=False, row_group_size=FAT // 10)
    return path


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_model, small_csv):
    """A run that reads 16 tokens per text: the big-file tests measure the streaming, not the encoder (which keeps them
    within minutes on a busy 2-core machine)."""
    from medclf import TrainConfig, train

    out = tmp_path_factory.mktemp("short") / "run"
    train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(out), epochs=1, max_length=16,
                      precision="fp32", few_shot="off"), progress=False)
    return out


def predict(run, *args):
    result = runner.invoke(app, ["predict", str(run), *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_chunked_output_equals_one_pass(trained_run, small_csv, tmp_path, suffix):
    predict(trained_run, "--input", small_csv, "--output", tmp_path / f"one.{suffix}", "--chunk-rows", "100000")
    predict(trained_run, "--input", small_csv, "--output", tmp_path / f"many.{suffix}", "--chunk-rows", "7")
    read = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[suffix]
    one, many = read(tmp_path / f"one.{suffix}"), read(tmp_path / f"many.{suffix}")
    pd.testing.assert_frame_equal(one, many)
    assert many["row"].tolist() == list(range(60)) and "text" not in many.columns
    assert many["input_label"].tolist() == pd.read_csv(small_csv)["label"].tolist()  # the input's own label column
    assert not list(tmp_path.glob(".*"))  # no parts or partial files left behind


def test_empty_texts_in_a_later_chunk_are_counted_over_the_whole_file(trained_run, tmp_path):
    table = big_table(30)
    table.loc[25, "text"] = ""
    table.to_csv(tmp_path / "in.csv", index=False)
    result = runner.invoke(app, ["predict", str(trained_run), "--input", str(tmp_path / "in.csv"), "--output",
                                 str(tmp_path / "out.csv"), "--chunk-rows", "10"])
    assert result.exit_code == 2 and "rows 26," in result.output and not (tmp_path / "out.csv").exists()


def _peak_rss_mib(cmd: list[str]) -> tuple[float, float]:
    """Run a command in a child; its peak resident memory (MiB) and wall seconds."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); subprocess.run(sys.argv[1:], check=True, "
            "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
            "time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    rss, seconds = out.stdout.split()
    return float(rss), float(seconds)


def test_a_big_file_streams_in_order_with_memory_independent_of_its_rows(short_run, fat_parquet, tmp_path):
    """Properties, not speeds: every row once and in order, and the peak memory of 20,000 rows that of 2,000 rows
    within 30 MiB. Measured: 2,000 rows 538-549 MiB, 20,000 rows 552-561, 60,000 rows 547-554 (noise of about 10 MiB);
    the same 20,000 rows read as one chunk (what a reader that kept every row would do) 638 MiB, +98."""
    out = tmp_path / "out.parquet"
    cmd = [sys.executable, "-m", "medclf", "-q", "predict", str(short_run), "--input", str(fat_parquet), "--output",
           str(out), "--backend", "torch", "--chunk-rows", "1000", "--batch-size", "256"]
    rss, _ = _peak_rss_mib(cmd)
    result = pd.read_parquet(out)
    assert len(result) == FAT and result["row"].tolist() == list(range(FAT))
    assert result["note_id"].tolist() == [f"n{i}" for i in range(FAT)] and SECRET not in result.to_csv()
    small = tmp_path / "small.parquet"
    pd.read_parquet(fat_parquet).head(FAT // 10).to_parquet(small, index=False)
    rss_small, _ = _peak_rss_mib(cmd[:7] + [str(small), "--output", str(tmp_path / "o2.parquet"), *cmd[10:]])
    assert rss < rss_small + 30, f"peak RSS {rss:.0f} MiB for {FAT} rows vs {rss_small:.0f} MiB for {FAT // 10}"


def test_a_killed_job_leaves_no_output_and_resumes_from_its_last_chunk(short_run, big_parquet, tmp_path):
    out = tmp_path / "out.csv"
    args = [sys.executable, "-m", "medclf", "-q", "predict", str(short_run), "--input", str(big_parquet), "--output",
            str(out), "--backend", "torch", "--chunk-rows", "2000", "--batch-size", "256"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    parts = tmp_path / ".out.csv.parts"
    deadline = time.monotonic() + 600
    while len(list(parts.glob("part-*.csv"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("part-*.csv")))
    assert 3 <= done_before < BIG // 2000 and not out.exists()  # killed mid-way: nothing under the final name

    result = runner.invoke(app, ["predict", str(short_run), "--input", str(big_parquet), "--output", str(out),
                                 "--backend", "torch", "--chunk-rows", "2000", "--batch-size", "256", "--resume"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert len(table) == BIG and table["row"].tolist() == list(range(BIG))
    assert not parts.exists()
    # the first chunks came from the killed run: the same predictions the classifier gives now
    from medclf import TextClassifier

    clf = TextClassifier.load(short_run, backend="torch", batch_size=256)
    texts = pd.read_parquet(big_parquet)["text"].head(done_before * 2000).tolist()
    assert table["label"].head(len(texts)).tolist() == clf.predict(texts)


def test_resume_refuses_another_input(trained_run, small_csv, tmp_path):
    out = tmp_path / "out.csv"
    parts = tmp_path / ".out.csv.parts"
    parts.mkdir()
    (parts / "job.json").write_text(json.dumps({"input": {"path": "/elsewhere.csv"}}))
    result = runner.invoke(app, ["predict", str(trained_run), "--input", str(small_csv), "--output", str(out), "--resume"])
    assert result.exit_code == 2 and "rerun without --resume" in result.output
    result = runner.invoke(app, ["predict", str(trained_run), "--input", str(small_csv), "--output", str(out)])
    assert result.exit_code == 0 and len(pd.read_csv(out)) == 60 and not parts.exists()
