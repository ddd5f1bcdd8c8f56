"""RunSpec: the one reader and writer of train_config.json, with every default in one place and a layout version."""

import json
import shutil

import pytest

from medclf import MedclfError, TextClassifier
from medclf.config import TRAIN_DEFAULTS, TrainConfig
from medclf.run.runspec import RUN_SPEC_VERSION, RunSpec


def test_a_trained_run_reads_back_as_it_was_written(trained_run, tmp_path):
    spec = RunSpec.read(trained_run)
    saved = json.loads((trained_run / "train_config.json").read_text())
    assert saved["version"] == RUN_SPEC_VERSION and spec.to_dict() == saved
    assert spec.labels == ["cardio", "derm", "neuro"] and spec.text_columns == ["text"] and spec.precision == "fp32"
    assert isinstance(spec.config, TrainConfig) and spec.max_length == spec.config.max_length
    copy = tmp_path / "copy"
    copy.mkdir()
    spec.write(copy)
    assert json.loads((copy / "train_config.json").read_text()) == saved


def test_inference_defaults_are_the_training_defaults(tiny_model):
    from transformers import AutoTokenizer

    from medclf.model.modeling import load_classifier

    clf = TextClassifier(load_classifier(tiny_model, labels=["a", "b"]), AutoTokenizer.from_pretrained(tiny_model))
    assert (clf.long_text, clf.pool, clf.max_length, clf.max_chunks) == tuple(
        TRAIN_DEFAULTS[k] for k in ("long_text", "pool", "max_length", "max_chunks"))
    assert clf.spec is None


def _edited(trained_run, tmp_path, edit):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    values = json.loads((run / "train_config.json").read_text())
    edit(values)
    (run / "train_config.json").write_text(json.dumps(values))
    return run


def test_a_run_from_before_the_version_field_reads_as_version_1_as_it_was_trained(trained_run, tmp_path):
    def old(values):
        del values["version"]
        del values["config"]["long_text"]  # runs from before --long-text truncated
        values["run"]["a_field_this_version_does_not_know"] = 1

    run = _edited(trained_run, tmp_path, old)
    spec = RunSpec.read(run)
    assert spec.version == 1 and spec.long_text == "truncate"
    assert TextClassifier.load(run).long_text == "truncate"


@pytest.mark.parametrize("edit, fragment", [
    (lambda v: v.update(version=RUN_SPEC_VERSION + 1), "written by a newer medclf"),
    (lambda v: v.update(version="one"), "no valid layout version"),
    (lambda v: v.pop("run"), "lacks its 'config' or 'run' part"),
    (lambda v: v["run"].pop("labels"), "names no labels"),
    (lambda v: v["config"].update(colour="red"), "Unknown training option(s) colour"),
    (lambda v: v["config"].update(max_length=0), "max_length must be a positive integer"),
])
def test_a_run_description_medclf_cannot_read_is_refused_in_one_sentence(trained_run, tmp_path, edit, fragment):
    run = _edited(trained_run, tmp_path, edit)
    with pytest.raises(MedclfError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        TextClassifier.load(run)


def test_damaged_json_is_a_user_error(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "train_config.json").write_text("{not json")
    with pytest.raises(MedclfError, match="is not valid JSON; the run is damaged"):
        RunSpec.read(run)


def test_explain_reads_long_texts_as_asked(trained_run, tmp_path):
    from typer.testing import CliRunner

    from medclf.cli.main import app

    text = " ".join(["patient seen today history reviewed"] * 80) + " chest pain troponin"
    for mode in ("chunk", "truncate"):
        result = CliRunner().invoke(app, ["explain", str(trained_run), text, "--method", "occlusion", "--long-text", mode,
                                          "--output", str(tmp_path / f"{mode}.json")])
        assert result.exit_code == 0, result.output
    chunk, truncate = (json.loads((tmp_path / f"{m}.json").read_text())[0] for m in ("chunk", "truncate"))
    assert all(w["seen"] for w in chunk["words"]) and not all(w["seen"] for w in truncate["words"])


def test_load_options_are_validated_where_they_are_built_and_reach_the_classifier(trained_run):
    from medclf.config import LoadOptions

    for bad, fragment in (({"backend": "tpu"}, "backend must be one of"), ({"batch_size": 0}, "batch_size must be"),
                          ({"long_text": "windows"}, "long_text must be one of"), ({"threads": -1}, "threads must be")):
        with pytest.raises(MedclfError, match=fragment):
            LoadOptions(**bad)
    options = LoadOptions(backend="torch", batch_size=5, long_text="chunk")
    clf = TextClassifier.load(trained_run, options)
    assert (clf.backend, clf.batch_size, clf.long_text) == ("torch", 5, "chunk")
    # the keywords are shorthand for fields of the options
    assert TextClassifier.load(trained_run, options, long_text="truncate").long_text == "truncate"
    assert options.replace(batch_size=None) == options
