"""Explanations: one score per word with offsets into the original text, integrated gradients' completeness,
a faithfulness check (deleting the top words costs more than deleting random ones), CLI and server."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import SECRET
from typer.testing import CliRunner

from medclf import MedclfError, TextClassifier
from medclf.cli.main import app
from medclf.inference.explain import deletion_check

runner = CliRunner()
TEXT = f"  Patient {SECRET}:  chest pain, troponin up;\nECG  changes.  "


@pytest.fixture(scope="module")
def clf(embedding_run):
    return TextClassifier.load(embedding_run, backend="torch")


@pytest.mark.parametrize("method", ["integrated-gradients", "occlusion"])
def test_one_score_per_word_with_offsets_into_the_original_text(clf, method):
    e = clf.explain(TEXT, method=method)
    assert [w["word"] for w in e.words] == TEXT.split()
    assert all(TEXT[w["start"]:w["end"]] == w["word"] for w in e.words)
    assert all(w["seen"] and isinstance(w["score"], float) for w in e.words)
    assert e.label == clf.predict(TEXT) and e.probability == pytest.approx(clf.predict_proba(TEXT).max(), abs=1e-5)
    assert set(e.probabilities) == set(clf.labels)


def test_integrated_gradients_add_up_to_the_probability_change(clf):
    e = clf.explain(TEXT, method="integrated-gradients", steps=64)
    assert e.delta is not None and e.delta < 0.01
    assert any(abs(w["score"]) > 1e-4 for w in e.words)


def test_a_requested_target_is_explained_and_an_unknown_one_refused(clf):
    other = [lab for lab in clf.labels if lab != clf.predict(TEXT)][0]
    assert clf.explain(TEXT, target=other).label == other
    with pytest.raises(MedclfError, match="not a label of this model"):
        clf.explain(TEXT, target="oncology")
    with pytest.raises(MedclfError, match="method must be one of"):
        clf.explain(TEXT, method="lime")


def test_words_the_model_never_read_get_no_score(trained_run):
    clf = TextClassifier.load(trained_run, backend="torch")
    clf.max_length, clf.long_text = 8, "truncate"  # read only the first 6 word pieces
    text = "chest pain troponin ecg heart murmur rash itchy plaques mole skin eczema"
    e = clf.explain(text, method="occlusion")
    assert e.words[0]["seen"] and not e.words[-1]["seen"] and e.words[-1]["score"] is None


@pytest.mark.parametrize("method", ["integrated-gradients", "occlusion"])
def test_deleting_the_top_words_lowers_the_probability_more_than_random_words(clf, small_csv, method):
    texts = pd.read_csv(small_csv)["text"].tolist()[:24]
    check = deletion_check(clf, texts, k=2, method=method, seed=0)
    assert check["texts"] == 24
    assert check["mean_drop_top_k"] > check["mean_drop_random_k"]


def test_explain_through_the_cli(embedding_run, tmp_path, clf):
    page = tmp_path / "e.html"
    result = runner.invoke(app, ["explain", str(embedding_run), TEXT, "chest pain", "--output", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert html.count("<section>") == 2 and "troponin" in html and "rgba(" in html
    assert not re.search(r"https?://", html) and "<script" not in html
    assert SECRET not in result.output  # the text goes to the file the user asked for, never to the log

    result = runner.invoke(app, ["explain", str(embedding_run), TEXT, "--method", "occlusion", "--output",
                                 str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "e.json").read_text())
    assert len(found) == 1 and found[0]["method"] == "occlusion" and len(found[0]["words"]) == len(TEXT.split())

    result = runner.invoke(app, ["explain", str(embedding_run), "chest pain", "--target", clf.labels[-1]])
    assert result.exit_code == 0 and json.loads(result.stdout)["label"] == clf.labels[-1]
    for bad, message in ((["--method", "lime"], "--method must be one of"), (["--target", "oncology"], "not a label"),
                         (["--output", str(tmp_path / "e.txt")], "Unknown output format")):
        result = runner.invoke(app, ["explain", str(embedding_run), TEXT, *bad])
        assert result.exit_code == 2 and message in result.output and SECRET not in result.output


def test_explain_over_http(embedding_run):
    from fastapi.testclient import TestClient

    from medclf.serving.app import create_app
    from medclf.serving.settings import ServeSettings

    with TestClient(create_app(ServeSettings(run_dir=str(embedding_run), backend="torch"))) as client:
        answer = client.post("/v1/explain", json={"text": TEXT, "method": "occlusion"})
        assert answer.status_code == 200
        body = answer.json()
        assert [w["word"] for w in body["words"]] == TEXT.split() and body["method"] == "occlusion"
        assert np.isclose(sum(body["probabilities"].values()), 1.0, atol=1e-5)
        for bad in ({"text": TEXT, "method": "lime"}, {"text": TEXT, "target": "oncology"}, {"text": "  "},
                    {"text": TEXT, "steps": 1}):
            answer = client.post("/v1/explain", json=bad)
            assert answer.status_code == 422 and SECRET not in answer.text
