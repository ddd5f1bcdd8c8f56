"""`medclf suggest`: each strategy's ranking on hand-made probabilities and embeddings, the run's embedding space,
and the command end to end (row numbers and scores, never text unless asked)."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SECRET, make_rows, write_csv
from typer.testing import CliRunner

from medclf import MedclfError, TextClassifier
from medclf.cli.main import app
from medclf.core.selection import k_center, rank, uncertainty

runner = CliRunner()


def test_margin_and_entropy_rank_by_their_own_uncertainty():
    probs = np.array([
        [0.98, 0.01, 0.01],  # sure
        [0.50, 0.50, 0.00],  # a coin toss between two classes: margin's first
        [0.40, 0.30, 0.30],  # spread over three: entropy's first
        [0.70, 0.20, 0.10],
    ])
    assert rank(probs, n=2, strategy="margin").order.tolist() == [1, 2]
    assert rank(probs, n=2, strategy="entropy").order.tolist() == [2, 3]  # entropy weighs the third class too
    margin = uncertainty(probs, strategy="margin")
    assert margin[1] == pytest.approx(1.0) and margin[0] == pytest.approx(0.03)
    entropy = uncertainty(probs, strategy="entropy")
    assert entropy.max() <= 1.0 and entropy[0] < entropy[1] < entropy[3] < entropy[2]
    assert rank(probs, n=10, strategy="margin").order.tolist() == [1, 2, 3, 0]  # n over the pool: all of it


def test_multi_label_uncertainty_is_the_label_closest_to_its_threshold():
    probs = np.array([[0.95, 0.02], [0.55, 0.01], [0.9, 0.28]])
    u = uncertainty(probs, multi_label=True)
    assert u.argmax() == 1 and u[1] == pytest.approx(0.9)
    # a threshold of 0.3 for the second label makes 0.28 the closest call
    assert uncertainty(probs, multi_label=True, thresholds=np.array([0.5, 0.3])).argmax() == 2
    # entropy averages over the labels: two half-sure labels outweigh one close call
    assert uncertainty(probs, strategy="entropy", multi_label=True).argmax() == 2


def test_random_is_seeded_and_covers_distinct_rows():
    probs = np.full((50, 2), 0.5)
    a, b = rank(probs, n=10, strategy="random", seed=1), rank(probs, n=10, strategy="random", seed=1)
    assert a.order.tolist() == b.order.tolist() and len(set(a.order)) == 10
    assert rank(probs, n=10, strategy="random", seed=2).order.tolist() != a.order.tolist()


def test_diverse_spreads_picks_over_clusters_of_near_duplicates():
    rng = np.random.default_rng(0)
    # ten near-copies of one uncertain note (cluster A, the most uncertain) and five of another (cluster B)
    a = np.array([1.0, 0.0, 0.0]) + rng.normal(0, 0.01, (10, 3))
    b = np.array([0.0, 1.0, 0.0]) + rng.normal(0, 0.01, (5, 3))
    sure = np.array([0.0, 0.0, 1.0]) + rng.normal(0, 0.01, (15, 3))
    embeddings = np.vstack([a, b, sure])
    probs = np.vstack([np.tile([0.5, 0.5], (10, 1)), np.tile([0.55, 0.45], (5, 1)), np.tile([0.99, 0.01], (15, 1))])
    margin = rank(probs, n=2, strategy="margin").order
    assert set(margin) <= set(range(10))  # both picks from cluster A
    diverse = rank(probs, n=2, strategy="diverse", embeddings=embeddings).order
    assert diverse[0] < 10 and 10 <= diverse[1] < 15  # one of each (the sure cluster is as far, but not uncertain)
    # rows already labelled near cluster A: the first pick goes elsewhere
    labelled = a[:1]
    assert 10 <= rank(probs, n=1, strategy="diverse", embeddings=embeddings, labelled=labelled).order[0] < 15
    with pytest.raises(MedclfError, match="needs one embedding per pool text"):
        rank(probs, n=2, strategy="diverse")


def test_k_center_picks_the_farthest_point_each_time():
    points = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.0]])
    points = points / np.linalg.norm(points, axis=1, keepdims=True)
    assert k_center(points, 3).tolist() == [0, 3, 2]


@pytest.mark.parametrize("kwargs, message", [({"n": 0}, "--n must be a positive"),
                                             ({"n": 3, "strategy": "bald"}, "Unknown strategy")])
def test_rank_refusals(kwargs, message):
    with pytest.raises(MedclfError, match=message):
        rank(np.full((4, 2), 0.5), **kwargs)


def test_embed_is_the_space_the_embeddings_head_reads(embedding_run, trained_run):
    texts = [r["text"] for r in make_rows(3, seed=5)]
    clf = TextClassifier.load(embedding_run)
    vectors = clf.embed(texts)
    assert vectors.shape == (len(texts), clf.torch_model().encoder.config.hidden_size)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    logits = clf.torch_model().head(torch.from_numpy(vectors)).detach().numpy() / clf.temperature
    assert np.allclose(clf.task.probabilities(logits), clf.predict_proba(texts), atol=1e-4)
    fine_tuned = TextClassifier.load(trained_run)
    same = fine_tuned.embed([texts[0], texts[0], texts[1]])
    assert np.allclose(same[0], same[1], atol=1e-6) and not np.allclose(same[0], same[2], atol=1e-3)


def test_suggest_through_the_cli(tmp_path, trained_run):
    rows = make_rows(10, seed=9)
    pool = write_csv(tmp_path / "pool.csv", [{"note_id": r["note_id"], "text": r["text"]} for r in rows])
    out = tmp_path / "next.csv"
    result = runner.invoke(app, ["suggest", str(trained_run), "--pool", str(pool), "--n", "5", "--strategy", "diverse",
                                 "--id-column", "note_id", "--output", str(out)])
    assert result.exit_code == 0, result.output
    picked = pd.read_csv(out)
    assert list(picked.columns) == ["rank", "row", "uncertainty", "note_id", "predicted"]
    assert len(picked) == 5 and picked["row"].is_unique and picked["row"].between(0, 29).all()
    assert (picked["note_id"] == [rows[r]["note_id"] for r in picked["row"]]).all()
    assert SECRET not in out.read_text() and SECRET not in result.output
    # margin to stdout: the most uncertain first; --keep-text adds the text
    shown = runner.invoke(app, ["suggest", str(trained_run), "--pool", str(pool), "--n", "3", "--keep-text"])
    assert shown.exit_code == 0, shown.output
    frame = pd.read_csv(__import__("io").StringIO(shown.stdout))
    assert frame["uncertainty"].is_monotonic_decreasing and frame["text"].str.contains(SECRET).all()
    clf = TextClassifier.load(trained_run)
    u = uncertainty(clf.predict_proba([r["text"] for r in rows]))
    assert frame["uncertainty"].tolist() == pytest.approx(sorted(u, reverse=True)[:3], abs=1e-5)


@pytest.mark.parametrize("extra, message", [(["--strategy", "bald"], "Unknown --strategy"),
                                            (["--n", "0"], "--n must be a positive"),
                                            (["--output", "x.xlsx"], "Unknown output format")])
def test_suggest_refusals_exit_2(tmp_path, trained_run, extra, message):
    pool = write_csv(tmp_path / "pool.csv", make_rows(2))
    result = runner.invoke(app, ["suggest", str(trained_run), "--pool", str(pool), *extra])
    assert result.exit_code == 2 and message in result.output and SECRET not in result.output
