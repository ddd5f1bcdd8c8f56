"""--long-text chunk: windowing arithmetic, pooling, and a tiny model overfitting long documents end to end."""

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SECRET, make_rows, write_csv
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.inference.classifier import TextClassifier
from medclf.model.batching import encode, pool_logits, pool_logits_torch, window_starts

runner = CliRunner()
KEYS = {"cardio": "chest pain troponin", "derm": "itchy rash plaques", "neuro": "seizure tremor stroke"}
FILL = ("patient seen today history reviewed medications listed allergies none vitals stable plan discussed "
        "follow up arranged").split()


def long_rows(n_per_class, seed=1):
    """Documents of ~40 neutral words with the class's key phrase at a random place past the start."""
    rng = random.Random(seed)
    rows = []
    for label, key in KEYS.items():
        for _ in range(n_per_class):
            words = [rng.choice(FILL) for _ in range(40)]
            pos = rng.randrange(8, 40)
            words[pos:pos] = key.split()
            rows.append({"text": f"{SECRET} " + " ".join(words), "label": label})
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------- windowing arithmetic


@pytest.mark.parametrize("n, budget, stride, cap, starts", [
    (5, 8, 2, 4, [0]),                      # fits in one window
    (8, 8, 2, 4, [0]),                      # exactly one window
    (10, 4, 1, 8, [0, 3, 6]),               # step 3, the last window ends at token 10
    (11, 4, 0, 8, [0, 4, 7]),               # no overlap; the last window is pulled back to end at 11
    (12, 4, 0, 8, [0, 4, 8]),               # exact multiple: no extra window
    (100, 10, 0, 3, [0, 40, 90]),           # 10 windows capped at 3, spread from first to last
    (100, 10, 5, 1, [0]),                   # a cap of 1 keeps the start
])
def test_window_starts(n, budget, stride, cap, starts):
    got = window_starts(n, budget, stride, cap)
    assert got == starts
    assert all(0 <= s <= max(0, n - budget) for s in got) and got == sorted(got)


def test_windows_cover_every_token_under_the_cap():
    for n in range(1, 60):
        for budget, stride in [(4, 0), (4, 3), (7, 2)]:
            starts = window_starts(n, budget, stride, 1000)
            covered = set()
            for s in starts:
                covered.update(range(s, min(n, s + budget)))
            assert covered == set(range(n))
            assert all(b - a == budget - stride for a, b in zip(starts, starts[1:-1]))


def test_bad_window_arguments_are_refused():
    with pytest.raises(ValueError):
        window_starts(10, 4, 4, 8)
    with pytest.raises(ValueError):
        window_starts(10, 0, 0, 8)


def test_encode_chunk_makes_framed_windows_and_maps_them_to_texts(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = ["word " * 30, "short", "other " * 12]
    enc = encode(tok, texts, max_length=10, long_text="chunk", stride=2, max_chunks=50)
    full = tok(texts)["input_ids"]
    assert enc.n_docs == 3 and enc.doc_of == sorted(enc.doc_of) and set(enc.doc_of) == {0, 1, 2}
    for window, doc in zip(enc.input_ids, enc.doc_of):
        assert len(window) <= 10 and window[0] == tok.cls_token_id and window[-1] == tok.sep_token_id
    assert enc.input_ids[enc.doc_of.index(1)] == full[1]  # a short text is one untouched window
    body = full[0][1:-1]
    windows = [w[1:-1] for w, d in zip(enc.input_ids, enc.doc_of) if d == 0]
    assert len(windows) == len(window_starts(len(body), 8, 2, 50))
    assert windows[0] == body[:8] and windows[-1] == body[-8:]
    assert enc.n_truncated == 0 and enc.tokens_lost == 0 and enc.windows_of([2, 1]) == [
        *[i for i, d in enumerate(enc.doc_of) if d == 2], enc.doc_of.index(1)]
    capped = encode(tok, texts, max_length=10, long_text="chunk", stride=2, max_chunks=2)
    assert capped.doc_of.count(0) == 2 and capped.n_truncated == 1 and capped.tokens_lost > 0


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_pooling_in_torch_matches_numpy_and_passes_gradients(mode):
    logits = torch.randn(7, 3, requires_grad=True)
    doc_of = [0, 0, 0, 1, 2, 2, 2]
    pooled = pool_logits_torch(logits, torch.tensor(doc_of), 3, mode)
    expected = pool_logits(logits.detach().numpy(), doc_of, 3, mode)
    assert np.allclose(pooled.detach().numpy(), expected, atol=1e-6)
    pooled.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert pool_logits(expected, None, 3, mode) is expected  # one sequence per text: nothing to pool


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def chunk_run(tmp_path_factory, tiny_model_64):
    """Trained in fp32, as on a CPU without AVX512-BF16: the settings reach 1.0 on every seeded set tried, with AVX2
    and AVX-512 kernels (the 32-wide model at lr 1e-2 stalled at 0.67 on both)."""
    root = tmp_path_factory.mktemp("chunk")
    data = write_csv(root / "long.csv", long_rows(3))
    out = root / "run"
    result = runner.invoke(app, [
        "train", "--data", str(data), "--test-data", str(data), "--val-data", str(data), "--model", tiny_model_64,
        "--output", str(out), "--max-length", "16", "--long-text", "chunk", "--max-chunks", "16", "--pool", "max",
        "--epochs", "100", "--lr", "1e-3", "--batch-size", "3", "--train-embeddings", "--no-average-epochs",
        "--head-init", "random", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    return out, data


def test_a_tiny_model_overfits_long_documents_in_chunk_mode(chunk_run):
    out, _ = chunk_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == 1.0
    trunc = metrics["data"]["truncation"]["train"] if "truncation" in metrics["data"] else metrics["truncation"]["train"]
    assert trunc["mean_windows"] > 2 and trunc["texts_cut"] == 0
    options = json.loads((out / "train_config.json").read_text())["config"]
    assert (options["long_text"], options["max_chunks"], options["pool"]) == ("chunk", 16, "max")
    assert "windows of at most 16 tokens" in (out / "train.log").read_text()


def test_chunk_predictions_survive_save_and_load(chunk_run):
    out, data = chunk_run
    texts = pd.read_csv(data)["text"].tolist()
    clf = TextClassifier.load(out)
    assert (clf.long_text, clf.max_chunks, clf.pool) == ("chunk", 16, "max")
    saved = pd.read_csv(out / "predictions_test.csv")
    probs = clf.predict_proba(texts)
    assert np.allclose(probs, saved[[f"prob_{lab}" for lab in clf.labels]].to_numpy(), atol=1e-5)
    assert clf.predict(texts) == pd.read_csv(data)["label"].tolist()
    assert clf.predict(texts[0]) == clf.predict(texts[:1])[0]


def test_chunk_runs_export_to_onnx_with_the_same_document_outputs(chunk_run, tmp_path):
    import shutil

    from medclf.export.onnx import export_onnx

    out, data = chunk_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    result = export_onnx(run, quantize="none", data=str(data))
    assert result.fp32_max_abs_diff <= 1e-4
    texts = pd.read_csv(data)["text"].tolist()
    a = TextClassifier.load(run, backend="torch").predict_proba(texts)
    b = TextClassifier.load(run, backend="onnx").predict_proba(texts)
    assert np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize("args, fragment", [
    (["--pool", "median"], "pool must be one of mean, max"),
    (["--long-text", "chunk", "--max-length", "16", "--stride", "14"], "stride (14) must be smaller than max_length - 2"),
    (["--max-chunks", "0"], "max_chunks must be"),
    (["--long-text", "window"], "long_text must be one of truncate, head-tail, chunk"),
])
def test_bad_chunk_options_are_user_errors(tmp_path, small_csv, tiny_model, args, fragment):
    result = runner.invoke(app, ["train", "--data", str(small_csv), "--model", tiny_model, "--output", str(tmp_path / "r"), *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and "Traceback" not in result.output


def test_predict_points_at_the_deciding_window_by_character_offsets(chunk_run, tmp_path):
    out, data = chunk_run
    texts = pd.read_csv(data)["text"].tolist()
    result = runner.invoke(app, ["predict", str(out), "--input", str(data), "--output", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert SECRET not in (tmp_path / "p.jsonl").read_text()
    for text, record in zip(texts, records):
        start, end = record["window"]["start"], record["window"]["end"]
        assert 0 <= start < end <= len(text)
    # the window holding the key phrase is the one that decides, for most documents
    hits = sum(KEYS[r["label"]].split()[0] in t[r["window"]["start"]:r["window"]["end"]] for t, r in zip(texts, records))
    assert hits >= len(texts) // 2
    csv = runner.invoke(app, ["predict", str(out), "--input", str(data), "--output", str(tmp_path / "p.csv")])
    assert csv.exit_code == 0 and {"window_start", "window_end"} <= set(pd.read_csv(tmp_path / "p.csv").columns)


def test_the_server_returns_the_window_too(chunk_run):
    from fastapi.testclient import TestClient

    from medclf.serving.app import create_app
    from medclf.serving.settings import ServeSettings

    out, data = chunk_run
    text = pd.read_csv(data)["text"].tolist()[0]
    with TestClient(create_app(ServeSettings(run_dir=str(out)))) as client:
        one = client.post("/v1/predict", json={"text": text}).json()
        many = client.post("/v1/predict", json={"texts": [text, text[:30]]}).json()["predictions"]
    assert 0 <= one["window"]["start"] < one["window"]["end"] <= len(text)
    assert many[0]["window"] == one["window"] and many[1]["window"] == {"start": 0, "end": 30}


def test_the_report_describes_the_windows(chunk_run):
    out, _ = chunk_run
    report = (out / "report.md").read_text()
    assert "windows of 16 tokens, at most 16 per text, window logits pooled by max" in report
    assert "windows per text" in report and SECRET not in report


def test_a_run_trained_on_short_texts_reads_long_ones_in_windows_when_asked(tiny_model, small_csv, tmp_path):
    """--long-text at inference overrides the run's choice: the same model, the text read window by window."""
    from medclf import TrainConfig, train

    trained_run = train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "run"), epochs=1,
                                    max_length=32, few_shot="off"), progress=False).run_dir
    long_text = " ".join(["patient seen today history reviewed"] * 40) + " chest pain troponin"
    clf = TextClassifier.load(trained_run, backend="torch", long_text="chunk")
    assert clf.long_text == "chunk" and TextClassifier.load(trained_run, backend="torch").long_text == "head-tail"
    result = clf.predictions([long_text])
    probs, spans = result.probabilities, result.windows
    assert np.isclose(probs.sum(), 1.0) and spans[0] is not None and spans[0][1] <= len(long_text)
    result = runner.invoke(app, ["predict", str(trained_run), long_text, "--long-text", "chunk", "--backend", "torch"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["window"]["end"] <= len(long_text) and "patient seen" not in result.stdout
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", str(trained_run), "--data", str(small_csv), "--long-text", "chunk",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["long_text"] == "chunk"


def test_an_unknown_long_text_at_inference_exits_2(trained_run):
    from medclf.serving.settings import ServeSettings

    result = runner.invoke(app, ["predict", str(trained_run), "some text", "--long-text", "windows"])
    assert result.exit_code == 2 and "long_text must be one of truncate, head-tail, chunk" in result.output
    with pytest.raises(Exception, match="--long-text must be one of"):
        ServeSettings(run_dir=str(trained_run), long_text="windows")


@pytest.mark.parametrize("long_text", ["head-tail", "chunk"])
def test_predictions_hold_what_predict_and_predict_proba_say_and_slice_per_text(trained_run, long_text):
    """One typed answer for files and the server: its rows are predict_proba's and predict's, in chunk mode each text
    has its deciding window (else None), and a slice of it is the answer for those texts."""
    from medclf.inference.classifier import Predictions

    texts = [r["text"] + " more words here" * 30 * (i % 2) for i, r in enumerate(make_rows(2))]
    clf = TextClassifier.load(trained_run, backend="torch", long_text=long_text)
    result = clf.predictions(texts)
    assert isinstance(result, Predictions) and len(result) == len(texts)
    np.testing.assert_allclose(result.probabilities, clf.predict_proba(texts), atol=1e-6)
    assert result.decided == clf.predict(texts)
    assert all((w is not None) == (long_text == "chunk") for w in result.windows)
    part = result[1:3]
    alone = clf.predictions(texts[1:3])
    np.testing.assert_allclose(part.probabilities, alone.probabilities, atol=1e-6)
    assert part.decided == alone.decided and part.windows == alone.windows
