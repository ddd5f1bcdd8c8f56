"""`--method embeddings`: a logistic-regression head on frozen mean-pooled embeddings, end to end."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.inference.classifier import TextClassifier
from medclf.model.embeddings import C_GRID, fit_logistic

runner = CliRunner()


def test_cli_trains_an_embedding_head_and_predict_serves_it(embedding_run, tmp_path):
    files = {p.name for p in (embedding_run / "model").iterdir()}
    assert {"head.safetensors", "head.json", "model.safetensors", "config.json"} <= files
    assert not any(p.suffix in (".pkl", ".pickle", ".bin", ".pt") for p in embedding_run.rglob("*"))
    metrics = json.loads((embedding_run / "metrics.json").read_text())
    assert metrics["method"] == "embeddings"
    assert metrics["timing"]["chosen_C"] in C_GRID
    assert [row["C"] for row in metrics["history"]] == list(C_GRID)
    saved = json.loads((embedding_run / "train_config.json").read_text())
    assert saved["config"]["method"] == "embeddings"

    out = tmp_path / "pred.jsonl"
    result = runner.invoke(app, ["predict", str(embedding_run), "chest pain troponin ecg", "rash itchy skin",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(row["label"] in ("cardio", "derm", "neuro") for row in rows)


def test_embedding_run_follows_the_predict_api_and_is_readable_without_medclf(embedding_run):
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    clf = TextClassifier.load(embedding_run)
    assert clf.labels == ["cardio", "derm", "neuro"]
    texts = ["chest pain troponin ecg heart", "seizure headache stroke mri"]
    probs = clf.predict_proba(texts)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert isinstance(clf.predict(texts[0]), str) and len(clf.predict(texts)) == 2
    np.testing.assert_allclose(clf.predict_proba(texts[0]), probs[0], atol=1e-5)

    # head.json's formula, with plain transformers and safetensors:
    model_dir = embedding_run / "model"
    spec = json.loads((model_dir / "head.json").read_text())
    assert spec["pooling"] == "mean" and spec["labels"] == clf.labels
    encoder = AutoModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    head = load_file(str(model_dir / "head.safetensors"))
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    manual = torch.softmax(pooled @ head["weight"].T + head["bias"], dim=-1).numpy()
    np.testing.assert_allclose(manual, probs, atol=1e-5)


def test_embeddings_separate_classes_even_from_a_random_tiny_encoder(embedding_run):
    """The class words differ, so mean-pooled token vectors are linearly separable: far above chance (1/3)."""
    metrics = json.loads((embedding_run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.6


def test_fit_logistic_folds_the_standardisation_into_the_weights():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 6)) * np.array([1, 10, 0.1, 5, 1, 2]) + np.array([3, -2, 0, 1, 0, 7])
    y = np.repeat([0, 1, 2], 30)
    x[y == 1, 0] += 2
    x[y == 2, 3] += 10
    weight, bias = fit_logistic(x, y, 3, c=1.0, class_weight=None, seed=0)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000)).fit(x, y)
    np.testing.assert_allclose(x @ weight.T + bias, reference.decision_function(x), rtol=1e-4, atol=1e-4)


def test_fit_logistic_gives_two_rows_for_two_classes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    weight, bias = fit_logistic(x, y, 2, c=1.0, class_weight=None, seed=0)
    assert weight.shape == (2, 3) and bias.shape == (2,)
    assert ((x @ weight.T + bias).argmax(axis=1) == y).mean() > 0.9


def test_a_damaged_head_file_is_a_user_error_not_a_traceback(embedding_run, tmp_path):
    import shutil

    from medclf.errors import MedclfError

    broken = tmp_path / "broken"
    shutil.copytree(embedding_run, broken)
    (broken / "model" / "head.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MedclfError, match="missing or damaged"):
        TextClassifier.load(broken)
