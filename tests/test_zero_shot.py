"""Label descriptions: --method zero-shot end to end (predict, evaluate, serve, export, TextClassifier), descriptions
seeding the head of the other methods, and the bad description files that must get one sentence."""

import json

import numpy as np
import pytest
from conftest import SECRET, WORDS
from typer.testing import CliRunner

from medclf import TextClassifier, TrainConfig, train
from medclf.cli.main import app
from medclf.errors import MedclfError

runner = CliRunner()


def _descriptions(path, rows=None):
    rows = rows or [{"label": lab, "description": "notes about " + " ".join(words[:4])} for lab, words in WORDS.items()]
    lines = ["label,description"] + [f"{r['label']},{r['description']}" for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def zero_shot_run(tmp_path_factory, tiny_model, small_csv):
    out = tmp_path_factory.mktemp("zs") / "run"
    desc = _descriptions(out.parent / "desc.csv")
    result = runner.invoke(app, ["train", "--data", str(small_csv), "--model", tiny_model, "--output", str(out),
                                 "--method", "zero-shot", "--label-descriptions", str(desc), "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    return out


def test_a_zero_shot_run_is_a_run_like_any_other(zero_shot_run, small_csv, tmp_path):
    metrics = json.loads((zero_shot_run / "metrics.json").read_text())
    assert metrics["method"] == "zero-shot" and metrics["selected"] == "label descriptions (zero-shot)"
    assert 0.0 <= metrics["test"]["macro_f1"] <= 1.0 and metrics["timing"]["optimizer_steps"] == 0
    log = (zero_shot_run / "train.log").read_text()
    assert "Zero-shot: 3 classes from 3 label description(s)" in log and SECRET not in log
    clf = TextClassifier.load(zero_shot_run)
    assert clf.labels == ["cardio", "derm", "neuro"]
    probs = clf.predict_proba(["chest pain and troponin", "itchy rash"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0)
    # the head is the class prototypes: unit rows scaled by the fixed scale (before calibration folds T into it)
    weight = clf.torch_model().head.weight.detach().numpy()
    norms = np.linalg.norm(weight, axis=1)
    assert np.allclose(norms, norms[0], rtol=1e-5)
    for command in (["predict", str(zero_shot_run), "chest pain"],
                    ["evaluate", str(zero_shot_run), "--data", str(small_csv)],
                    ["export", str(zero_shot_run), "--data", str(small_csv), "--quantize", "none"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
        assert SECRET not in result.output
    assert TextClassifier.load(zero_shot_run, backend="onnx").predict("chest pain") in clf.labels


def test_a_zero_shot_run_is_served(zero_shot_run):
    from fastapi.testclient import TestClient

    from medclf.serving.app import create_app
    from medclf.serving.settings import ServeSettings

    with TestClient(create_app(ServeSettings(run_dir=str(zero_shot_run)))) as client:
        answer = client.post("/v1/predict", json={"texts": ["chest pain", "itchy rash"]})
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2
        assert client.get("/v1/model").json()["method"] == "zero-shot"


@pytest.mark.parametrize("method", ["embeddings", "finetune"])
def test_descriptions_join_the_rows_the_head_is_first_fitted_on(tmp_path, tiny_model, small_csv, monkeypatch, method):
    import medclf.model.embeddings
    import medclf.training.frozen

    seen = []
    for module in (medclf.model.embeddings, medclf.training.frozen):
        real = module.fit_logistic
        monkeypatch.setattr(module, "fit_logistic", lambda x, y, *a, _real=real, **k: seen.append((x.shape, y.copy()))
                            or _real(x, y, *a, **k))
    desc = _descriptions(tmp_path / "desc.csv", [{"label": "cardio", "description": "heart"},
                                                 {"label": "cardio", "description": "chest pain"},
                                                 {"label": "derm", "description": "skin"},
                                                 {"label": "neuro", "description": "brain"}])
    config = TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "r"), method=method, max_steps=1,
                         label_descriptions=str(desc), few_shot="off")  # few-shot mode also cross-validates C
    result = train(config, progress=False)
    n_train = result.metrics["data"]["n_train"]
    assert seen and all(shape[0] == n_train + 4 for shape, _ in seen)
    y = seen[0][1]
    assert list(y[-4:]) == [0, 0, 1, 2]  # each description an example of its own class
    assert "label descriptions join" in (result.run_dir / "train.log").read_text()


def test_descriptions_are_also_a_prior_the_embeddings_head_is_chosen_with(tmp_path, tiny_model, small_csv):
    from medclf.core.tasks import task_for
    from medclf.training.frozen import PRIOR_WEIGHTS, cross_validated_f1

    # on hand-made features: a strong enough prior (the true class directions) decides alone, whatever the regression
    rng = np.random.default_rng(0)
    directions = np.eye(3, 8)
    y = np.repeat([0, 1, 2], 6)
    x = directions[y] + rng.normal(0, 0.1, (18, 8))
    task = task_for(False)
    labels = ["a", "b", "c"]
    assert cross_validated_f1(x, y, labels, task, c=0.01, class_weight=None, seed=0, prior=200.0 * directions) == 1.0
    wrong = 200.0 * directions[[1, 2, 0]]  # a prior that names every class wrongly is followed too: it is applied
    assert cross_validated_f1(x, y, labels, task, c=0.01, class_weight=None, seed=0, prior=wrong) == 0.0
    # a run: every C is tried with every prior weight, the choice is named, and the head still loads as a run's
    desc = _descriptions(tmp_path / "desc.csv")
    result = train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "r"), method="embeddings",
                               label_descriptions=str(desc), few_shot="on"), progress=False)
    history = result.metrics["history"]
    assert len(history) == 4 * len(PRIOR_WEIGHTS) and {row["prior_weight"] for row in history} == set(PRIOR_WEIGHTS)
    assert all("cv_macro_f1" in row for row in history)  # few labels: cross-validation ranks them
    assert ", prior " in result.metrics["selected"]
    assert "Label descriptions as a prior" in (result.run_dir / "train.log").read_text()
    assert "| C | prior weight |" in (result.run_dir / "report.md").read_text()
    assert TextClassifier.load(result.run_dir).predict_proba(["chest pain"]).shape == (1, 3)


@pytest.mark.parametrize(("rows", "message"), [
    ([{"label": "cardio", "description": "heart"}, {"label": "derm", "description": "skin"},
      {"label": "neuro", "description": "brain"}, {"label": "ortho", "description": "bones"}],
     "describes label(s) 'ortho' that the data does not have"),
    ([{"label": "cardio", "description": "heart"}, {"label": "derm", "description": "skin"}],
     "has no description for label(s) 'neuro'"),
    ([{"label": "cardio", "description": "heart"}, {"label": "derm", "description": " "},
      {"label": "neuro", "description": "brain"}], "the description is empty"),
])
def test_bad_descriptions_exit_2_with_one_sentence(tmp_path, tiny_model, small_csv, rows, message):
    desc = _descriptions(tmp_path / "desc.csv", rows)
    result = runner.invoke(app, ["train", "--data", str(small_csv), "--model", tiny_model, "--output",
                                 str(tmp_path / "r"), "--method", "zero-shot", "--label-descriptions", str(desc), "--precision", "fp32"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_descriptions_as_json_and_the_options_they_need(tmp_path):
    from medclf.core.descriptions import read_label_descriptions

    path = tmp_path / "d.json"
    path.write_text(json.dumps({"cardio": ["heart", "chest pain"], "derm": "skin"}), encoding="utf-8")
    assert read_label_descriptions(str(path)) == {"cardio": ["heart", "chest pain"], "derm": ["skin"]}
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(MedclfError, match="must hold a JSON object"):
        read_label_descriptions(str(path))
    with pytest.raises(MedclfError, match="--method zero-shot needs --label-descriptions"):
        TrainConfig(method="zero-shot")
    with pytest.raises(MedclfError, match="leave --head-init on linear-probe"):
        TrainConfig(label_descriptions=str(path), head_init="random")
