"""The CLI end to end: CliRunner for each command and each bad input, and one real subprocess pipeline."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import SECRET, make_rows, write_csv
from typer.testing import CliRunner

from medclf import __version__
from medclf.cli.main import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert SECRET not in result.output, "raw input text leaked into the output"
    return result


def assert_user_error(result, fragment):
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"medclf {__version__}"


def _options(command):
    import typer

    group = typer.main.get_command(app)
    return {p.name: p.default for p in group.commands[command].params}


def test_train_cv_and_audit_take_the_same_train_options_with_the_configs_defaults():
    """One declaration of train's options: cv and audit have every one of them (plus their own), with the defaults
    of TrainConfig (audit fits embeddings unless told otherwise), so the three commands cannot drift apart."""
    from medclf.config import TrainConfig

    train, cv, audit = (_options(c) for c in ("train", "cv", "audit"))
    config = TrainConfig()
    for name, default in train.items():
        if name in TrainConfig.__dataclass_fields__:
            assert default == getattr(config, name), name
    assert {k: v for k, v in cv.items() if k in train} == train
    assert {k: v for k, v in audit.items() if k in train} == {**train, "method": "embeddings"}
    assert set(cv) - set(train) == {"folds", "workers"}
    assert set(audit) - set(train) == {"folds", "workers", "id_column", "keep_text", "fix", "accept_top"}


def test_cv_refuses_num_processes_in_one_sentence(small_csv):
    assert_user_error(invoke("cv", "--data", small_csv, "--num-processes", "2"), "--workers runs folds in parallel")


def test_train_evaluate_predict_pipeline(tmp_path, tiny_model, small_csv):
    out = tmp_path / "run"
    result = invoke("train", "--data", small_csv, "--model", tiny_model, "--output", out, "--epochs", "3",
                    "--lr", "3e-3", "--batch-size", "8", "--few-shot", "off")
    assert result.exit_code == 0, result.output
    assert "macro-F1" in result.stdout and f"Run written to {out}" in result.stdout
    assert "Data: 43 train / 5 validation / 12 test rows, 3 classes" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["macro_f1"] <= 1.0

    report = tmp_path / "eval.json"
    result = invoke("evaluate", out, "--data", small_csv, "--output", report)
    assert result.exit_code == 0, result.output
    evaluated = json.loads(report.read_text())
    assert evaluated["n"] == 60 and "per_class" in evaluated and "roc_auc_ovr_macro" in evaluated

    result = invoke("predict", out, "chest pain troponin", "itchy rash on skin")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["row"] for line in lines] == [0, 1]
    assert set(lines[0]["probabilities"]) == {"cardio", "derm", "neuro"}
    assert lines[0]["label"] in {"cardio", "derm", "neuro"}
    assert abs(sum(lines[0]["probabilities"].values()) - 1) < 1e-5


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "parquet"])
@pytest.mark.parametrize("out_suffix", ["csv", "jsonl"])
def test_predict_tables_keep_other_columns_but_not_the_text(tmp_path, trained_run, suffix, out_suffix):
    frame = pd.DataFrame(make_rows(3))
    src = tmp_path / f"in.{suffix}"
    {"csv": lambda: frame.to_csv(src, index=False), "tsv": lambda: frame.to_csv(src, index=False, sep="\t"),
     "jsonl": lambda: frame.to_json(src, orient="records", lines=True), "parquet": lambda: frame.to_parquet(src)}[suffix]()
    dst = tmp_path / f"out.{out_suffix}"
    result = invoke("predict", trained_run, "--input", src, "--output", dst)
    assert result.exit_code == 0, result.output
    out = pd.read_csv(dst) if out_suffix == "csv" else pd.read_json(dst, lines=True)
    assert len(out) == 9
    assert out["note_id"].tolist() == frame["note_id"].tolist()
    assert "text" not in out.columns
    assert SECRET not in dst.read_text()
    assert set(out["label"]) <= {"cardio", "derm", "neuro"}


def test_predict_text_file_top_k_and_keep_text(tmp_path, trained_run):
    src = tmp_path / "notes.txt"
    src.write_text("chest pain\nitchy rash\nseizure today\n", encoding="utf-8")
    dst = tmp_path / "out.csv"
    result = invoke("predict", trained_run, "--input", src, "--output", dst, "--top-k", "2", "--keep-text")
    assert result.exit_code == 0, result.output
    out = pd.read_csv(dst)
    assert list(out.columns) == ["text", "row", "label", "score", "top1_label", "top1_prob", "top2_label", "top2_prob"]
    assert out["text"].tolist() == ["chest pain", "itchy rash", "seizure today"]
    assert (out["top1_prob"] >= out["top2_prob"]).all() and (out["label"] == out["top1_label"]).all()


@pytest.fixture()
def bad_files(tmp_path):
    rows = make_rows(4)
    files = {}
    files["latin"] = tmp_path / "latin.csv"
    files["latin"].write_bytes(f"text,label\n{SECRET} caf\xe9,a\n".encode("latin-1"))
    empty = [dict(r) for r in rows]
    empty[0]["text"] = ""
    files["empty"] = write_csv(tmp_path / "empty.csv", empty)
    files["one_class"] = write_csv(tmp_path / "one.csv", make_rows(5, labels=("cardio",)))
    files["rare"] = write_csv(tmp_path / "rare.csv", make_rows(6, labels=("cardio", "derm")) + make_rows(1, labels=("neuro",)))
    files["unseen"] = write_csv(tmp_path / "unseen.csv", make_rows(2, labels=("cardio",)) + [
        {"note_id": "n", "text": f"{SECRET} x", "label": "oncology"}])
    files["garbled"] = tmp_path / "garbled.parquet"
    files["garbled"].write_bytes(b"PAR1 this is not parquet")
    files["bad_csv"] = tmp_path / "bad.csv"
    files["bad_csv"].write_text('text,label\n"unclosed quote, a\nfoo,b,c,d\n', encoding="utf-8")
    return files


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("missing", "File not found"),
        ("unknown_format", "Unknown file format '.xlsx'"),
        ("latin", "not valid UTF-8"),
        ("missing_column", "Text column(s) 'body' not in"),
        ("empty", "1 empty or missing text(s)"),
        ("one_class", "only one class ('cardio')"),
        ("rare", "Class 'neuro' has only 1 row(s)"),
        ("unseen", "never seen in training ('oncology')"),
        ("garbled", "could not be parsed as PARQUET"),
        ("bad_csv", "could not be parsed as CSV"),
        ("bad_option", "precision must be one of"),
        ("too_long", "--max-length 600 is more than this model reads (512 tokens)"),
    ],
)
def test_bad_training_input_gives_one_sentence_and_exit_2(tmp_path, tiny_model, small_csv, bad_files, case, fragment):
    args = ["train", "--model", tiny_model, "--output", tmp_path / "out", "--max-steps", "1"]
    data = {
        "missing": tmp_path / "nope.csv", "unknown_format": tmp_path / "x.xlsx", "missing_column": small_csv,
        "unseen": small_csv, "bad_option": small_csv, "too_long": small_csv,
    }.get(case, bad_files.get(case))
    if case == "unknown_format":
        data.write_text("x")
    args += ["--data", data]
    if case == "missing_column":
        args += ["--text-column", "body"]
    if case == "unseen":
        args += ["--test-data", bad_files["unseen"]]
    if case == "bad_option":
        args += ["--precision", "fp64"]
    if case == "too_long":
        args += ["--max-length", "600"]
    result = invoke(*args)
    assert_user_error(result, fragment)
    assert not (tmp_path / "out").exists()


def test_drop_empty_skips_the_empty_rows(tmp_path, tiny_model, bad_files):
    result = invoke("train", "--data", bad_files["empty"], "--model", tiny_model, "--output", tmp_path / "o",
                    "--max-steps", "1", "--drop-empty")
    assert result.exit_code == 0, result.output
    assert "Skipped 1 row(s)" in result.stderr


def test_existing_run_needs_overwrite(tmp_path, trained_run, tiny_model, small_csv):
    result = invoke("train", "--data", small_csv, "--model", tiny_model, "--output", trained_run, "--max-steps", "1")
    assert_user_error(result, "already holds a run; pass --overwrite")


def test_run_dir_that_is_not_a_run(tmp_path, small_csv):
    assert_user_error(invoke("predict", tmp_path, "text"), "is not a medclf run directory")
    assert_user_error(invoke("evaluate", tmp_path / "nope", "--data", small_csv), "does not exist")


def test_predict_refuses_empty_texts_and_conflicting_inputs(tmp_path, trained_run):
    src = tmp_path / "in.txt"
    src.write_text("one\n\nthree\n", encoding="utf-8")
    assert_user_error(invoke("predict", trained_run, "--input", src), "1 empty text(s)")
    result = invoke("predict", trained_run, "--input", src, "--drop-empty")
    assert result.exit_code == 0 and [json.loads(x)["row"] for x in result.stdout.splitlines()] == [0, 2]
    assert_user_error(invoke("predict", trained_run), "No texts to classify")
    assert_user_error(invoke("predict", trained_run, "x", "--output", tmp_path / "o.xml"), "Unknown output format")


def test_evaluate_refuses_labels_the_model_never_saw(trained_run, bad_files):
    assert_user_error(invoke("evaluate", trained_run, "--data", bad_files["unseen"]), "never trained on ('oncology')")


def test_unexpected_errors_exit_1_without_traceback_unless_debug(monkeypatch, trained_run):
    import medclf.inference.files

    def broken(*args, **kwargs):
        raise RuntimeError(f"internal detail {SECRET}")

    monkeypatch.setattr(medclf.inference.files, "predict_file", broken)
    result = invoke("predict", trained_run, "x")
    assert result.exit_code == 1
    assert "unexpected RuntimeError" in result.stderr and "--debug" in result.stderr
    assert "Traceback" not in result.output
    debug = runner.invoke(app, ["--debug", "predict", str(trained_run), "x"])
    assert isinstance(debug.exception, RuntimeError)


def test_real_cli_process_end_to_end(tmp_path, tiny_model, small_csv):
    """`python -m medclf` as a user runs it: train, then predict from CSV on stdin-free files, exit codes real."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "medclf", "train", "--data", str(small_csv), "--model", tiny_model,
           "--output", str(out), "--epochs", "2", "--lr", "3e-3", "--few-shot", "off"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Run written to" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 12
    done = subprocess.run([sys.executable, "-m", "medclf", "predict", str(out), "--input", str(small_csv)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 60 and SECRET not in done.stdout
    bad = subprocess.run([sys.executable, "-m", "medclf", "train", "--data", str(tmp_path / "missing.csv")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == f"Error: File not found: {tmp_path / 'missing.csv'}; check the path."


def test_train_reads_csv_from_stdin(tmp_path, tiny_model, small_csv):
    result = runner.invoke(app, ["train", "--data", "-", "--model", tiny_model, "--output", str(tmp_path / "r"),
                                 "--max-steps", "1"], input=small_csv.read_text())
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r" / "train_config.json").read_text())
    assert saved["config"]["data"] == "-" and saved["run"]["data_sha256"]["data"] is None


def test_inference_and_serve_defaults_are_those_of_their_settings():
    from medclf.config import LoadOptions
    from medclf.serving.settings import ServeSettings

    load, serve = LoadOptions(), ServeSettings(run_dir="-")
    for command in ("predict", "evaluate", "suggest"):
        options = _options(command)
        assert options["backend"] == load.backend and options["batch_size"] == load.batch_size, command
    assert _options("predict")["precision"] == load.precision
    served = _options("serve")
    shared = [name for name in served if name in ServeSettings.__dataclass_fields__ and name != "run_dir"]
    assert len(shared) >= 10 and all(served[name] == getattr(serve, name) for name in shared)
