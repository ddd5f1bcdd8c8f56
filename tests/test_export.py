"""`medclf export`: ONNX fp32 and int8, checked against PyTorch, loaded through the same TextClassifier API."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from conftest import SECRET
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.errors import MedclfError
from medclf.export import onnx as onnx_export
from medclf.inference.classifier import TextClassifier

runner = CliRunner()
NEW_TEXTS = ["crushing chest pain and troponin rise", "itchy rash with silvery plaques on the elbows",
             "sudden speech loss and right arm weakness on mri", "tremor"]


def export_cli(*args):
    result = runner.invoke(app, ["export", *map(str, args)])
    assert SECRET not in result.output
    return result


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, trained_run, small_csv):
    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(trained_run, run)
    result = export_cli(run)  # checked on the run's own test part, read again from the training table
    assert result.exit_code == 0, result.output
    return run, result.output


def test_export_writes_checked_fp32_and_int8_models(exported_run):
    run, output = exported_run
    folder = run / "onnx"
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "export.json", "config.json", "tokenizer.json"} <= names
    assert not any(n.startswith(".") for n in names), names
    info = json.loads((folder / "export.json").read_text())
    check = info["check"]
    n_test = len(pd.read_csv(run / "predictions_test.csv"))
    assert check["n_check_texts"] == n_test and check["fp32_max_abs_diff"] <= 1e-4
    assert check["checked_on_test_part"] and check["check_source"] == f"the run's test part ({n_test} texts)"
    assert info["labels"] == ["cardio", "derm", "neuro"]
    assert "max |probability difference|" in output and f"% of {n_test} texts" in output
    tried = check["int8_tried"]
    assert tried, "the int8 check ran"
    if check["int8_file"]:  # the first recipe that reaches 99% is kept, and only then
        assert "model.int8.onnx" in names and check["int8_agreement"] >= 0.99
        assert tried[-1]["recipe"] == check["int8_recipe"] and all(t["agreement"] < 0.99 for t in tried[:-1])
    else:
        assert "model.int8.onnx" not in names and all(t["agreement"] < 0.99 for t in tried)
    assert SECRET not in (folder / "export.json").read_text()


def test_onnx_backend_gives_the_same_outputs_through_the_same_api(exported_run):
    run, _ = exported_run
    torch_clf = TextClassifier.load(run, backend="torch")
    onnx_clf = TextClassifier.load(run, backend="onnx")
    assert onnx_clf.backend == "onnx" and onnx_clf.labels == torch_clf.labels
    expected = torch_clf.predict_proba(NEW_TEXTS)
    got = onnx_clf.predict_proba(NEW_TEXTS)
    assert got.shape == (4, 3) and np.abs(got - expected).max() < 1e-4
    assert onnx_clf.predict(NEW_TEXTS) == torch_clf.predict(NEW_TEXTS)
    assert onnx_clf.predict(NEW_TEXTS[0]) == torch_clf.predict(NEW_TEXTS[0])
    assert np.abs(onnx_clf.predict_proba(NEW_TEXTS[1]) - expected[1]).max() < 1e-4
    assert onnx_clf.predict([]) == []


def test_auto_prefers_the_int8_export_and_falls_back_to_torch(exported_run, trained_run):
    run, _ = exported_run
    int8 = (run / "onnx" / "model.int8.onnx").is_file()
    assert TextClassifier.load(run).backend == ("onnx-int8" if int8 else "onnx")
    assert TextClassifier.load(trained_run).backend == "torch"  # never exported
    with pytest.raises(MedclfError, match="medclf export"):
        TextClassifier.load(trained_run, backend="onnx")
    with pytest.raises(MedclfError, match="backend must be one of"):
        TextClassifier.load(run, backend="tensorrt")
    if int8:
        clf = TextClassifier.load(run, backend="onnx-int8")
        ref = TextClassifier.load(run, backend="torch")
        assert clf.predict(NEW_TEXTS) == ref.predict(NEW_TEXTS)


def test_exported_graph_runs_in_plain_onnxruntime_with_dynamic_axes(exported_run):
    """No medclf at inference: tokenizer.json + model.onnx + config.json's id2label are enough."""
    from transformers import AutoTokenizer

    run, _ = exported_run
    folder = run / "onnx"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    id2label = json.loads((folder / "config.json").read_text())["id2label"]
    ref = TextClassifier.load(run, backend="torch")
    for texts in (NEW_TEXTS[:1], NEW_TEXTS):  # batch 1 and 4, different sequence lengths
        enc = tokenizer(texts, padding=True, return_tensors="np")
        logits = session.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                    "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
        assert [id2label[str(i)] for i in logits.argmax(axis=1)] == ref.predict(texts)


def test_cli_predict_and_evaluate_take_a_backend(exported_run, small_csv):
    run, _ = exported_run
    result = runner.invoke(app, ["predict", str(run), "--backend", "onnx", NEW_TEXTS[0]])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["label"] == TextClassifier.load(run, backend="torch").predict(NEW_TEXTS[0])
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(small_csv), "--backend", "onnx", "--output",
                                 str(run.parent / "m.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((run.parent / "m.json").read_text())["backend"] == "onnx"


def test_embedding_runs_export_too(embedding_run, tmp_path, small_csv):
    run = tmp_path / "emb"
    shutil.copytree(embedding_run, run)
    result = onnx_export.export_onnx(run, quantize="none", data=str(small_csv))
    assert result.fp32_max_abs_diff <= 1e-4 and result.int8_file is None
    assert not (run / "onnx" / "model.int8.onnx").exists()
    a = TextClassifier.load(run, backend="torch").predict_proba(NEW_TEXTS)
    b = TextClassifier.load(run, backend="onnx").predict_proba(NEW_TEXTS)
    assert np.abs(a - b).max() < 1e-4


def test_a_failed_check_writes_nothing(trained_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", -1.0)  # every export now "differs"
    result = export_cli(run, "--quantize", "none")
    assert result.exit_code == 2 and "differs from PyTorch" in result.stderr and "Traceback" not in result.output
    assert not (run / "onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and not any(p.name.startswith(".") for p in run.iterdir())


def test_an_interrupted_export_keeps_the_previous_one(exported_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(exported_run[0], run)
    before = (run / "onnx" / "model.onnx").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "_copy_model_files", boom)
    result = export_cli(run, "--quantize", "none")
    assert result.exit_code == 130
    assert (run / "onnx" / "model.onnx").read_bytes() == before
    assert not any(p.name.startswith(".") for p in run.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["--quantize", "int4"], "--quantize must be none or int8"),
    (["--format", "tflite"], "--format must be onnx"),
    (["--int8-recipe", "int4"], "--int8-recipe must be auto or one of dynamic, blockwise-128, blockwise-32"),
])
def test_bad_export_options_are_user_errors(trained_run, args, fragment):
    result = export_cli(trained_run, *args)
    assert result.exit_code == 2 and fragment in result.stderr and "Traceback" not in result.output


def test_export_of_something_that_is_not_a_run(tmp_path):
    result = export_cli(tmp_path)
    assert result.exit_code == 2 and "not a medclf run directory" in result.stderr


def test_a_named_int8_recipe_is_the_only_one_tried(trained_run, tmp_path, small_csv):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = export_cli(run, "--data", small_csv, "--int8-recipe", "blockwise-32")
    assert result.exit_code == 0, result.output
    tried = json.loads((run / "onnx" / "export.json").read_text())["check"]["int8_tried"]
    assert [t["recipe"] for t in tried] == ["blockwise-32"] and "int8 (blockwise-32)" in result.output
    if tried[0]["agreement"] >= 0.99:
        import onnx

        ops = {node.op_type for node in onnx.load(str(run / "onnx" / "model.int8.onnx")).graph.node}
        assert "MatMulNBits" in ops and "MatMulInteger" not in ops


def test_int8_recipes_that_do_not_run_on_a_model_fall_back_to_fp32_with_the_reason(trained_run, tmp_path, monkeypatch):
    """As on Longformer, whose int8 graph fails in ONNX Runtime (ScatterND): each failing recipe is skipped with its
    error, the fp32 model is the export, and the command says so and succeeds."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)

    def broken(src, dst):
        raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running "
                           "ScatterND node.\nsecond line")

    monkeypatch.setattr(onnx_export, "_recipes", lambda: [("dynamic", broken), ("blockwise-128", broken)])
    result = export_cli(run, "--quantize", "int8")
    assert result.exit_code == 0, result.output
    check = json.loads((run / "onnx" / "export.json").read_text())["check"]
    assert check["int8_file"] is None and (run / "onnx" / "model.onnx").is_file()
    assert not (run / "onnx" / "model.int8.onnx").exists() and not list((run / "onnx").glob(".*"))
    assert [t["error"] for t in check["int8_tried"]] == [
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running ScatterND node."] * 2
    assert "no int8 recipe runs on this model (dynamic, blockwise-128 failed in ONNX Runtime)" in check["int8_skipped"]
    assert "does not run on this model in ONNX Runtime, skipped" in result.output
    assert "the fp32 ONNX model is the export" in result.stderr
    assert TextClassifier.load(run, backend="auto").backend == "onnx"


def test_auto_takes_int8_only_where_it_was_checked_on_the_runs_test_part(exported_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_run[0], run)
    folder = run / "onnx"
    if not (folder / "model.int8.onnx").is_file():  # the rule, not the quantizer, is under test: any ONNX file will do
        shutil.copy(folder / "model.onnx", folder / "model.int8.onnx")
    info = json.loads((folder / "export.json").read_text())

    def auto_with(**check):
        (folder / "export.json").write_text(json.dumps({**info, "check": {**info["check"], **check}}))
        return TextClassifier.load(run).backend

    assert auto_with(checked_on_test_part=True, int8_agreement=0.995) == "onnx-int8"
    assert auto_with(checked_on_test_part=True, int8_agreement=0.972) == "onnx"  # below 99%: the fp32 graph
    assert auto_with(checked_on_test_part=False, int8_agreement=1.0) == "onnx"  # checked on other texts
    (folder / "export.json").write_text(json.dumps({**info, "check": {"int8_agreement": 1.0}}))  # an older export
    assert TextClassifier.load(run).backend == "onnx"
    assert TextClassifier.load(run, backend="onnx-int8").backend == "onnx-int8"  # asked for: taken


def test_an_export_whose_test_table_changed_is_checked_on_other_texts(trained_run, tmp_path, small_csv):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "train_config.json").read_text())
    moved = tmp_path / "moved.csv"
    pd.read_csv(small_csv).iloc[:-1].to_csv(moved, index=False)  # not the table the run was trained on
    config["run"]["data_file"] = str(moved)
    (run / "train_config.json").write_text(json.dumps(config))
    result = onnx_export.export_onnx(run, quantize="none")
    assert not result.checked_on_test_part and result.check_source == "packaged demo notes"
    result = onnx_export.export_onnx(run, quantize="none", data=str(small_csv))
    assert not result.checked_on_test_part and result.check_source == str(small_csv)
