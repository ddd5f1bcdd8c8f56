"""What medclf chooses per device (batching, padding, inference precision, the baseline in the background), with CUDA
mocked where a choice depends on it: these run on any CPU, and a GPU run (benchmarks/speed/gpu.py) measures what they buy."""

import numpy as np
import pytest
import torch
from conftest import make_rows
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.config import LoadOptions
from medclf.core.baseline import start_tfidf
from medclf.errors import MedclfError
from medclf.inference.classifier import TextClassifier
from medclf.model.batching import collate, sorted_batches
from medclf.model.modeling import (
    GPU_MAX_BATCH,
    GPU_TOKEN_BUDGET,
    batching_for,
    inference_precision,
    pad_multiple_for,
    to_device,
)

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_token_budget_batches_cover_every_text_once_and_stay_within_the_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 300, size=500).tolist()
    batches = sorted_batches(lengths, 1000, max_tokens=4096, pad_multiple=8)
    assert sorted(i for b in batches for i in b) == list(range(500))
    widths = [-(-max(lengths[i] for i in b) // 8) * 8 for b in batches]
    assert all(len(b) * w <= 4096 for b, w in zip(batches, widths))
    # short texts share larger batches than long ones: the budget, not a fixed count, decides
    assert len(batches[-1]) > len(batches[0])
    # longest first, as the fixed-size batches are
    assert lengths[batches[0][0]] == max(lengths)


def test_a_text_longer_than_the_budget_still_gets_its_own_batch():
    assert sorted_batches([50, 10], 8, max_tokens=16) == [[0], [1]]


def test_collate_pads_to_a_multiple_and_masks_the_padding():
    out = collate([[1, 2, 3], [4]], pad_id=0, pad_multiple=8)
    assert out["input_ids"].shape == (2, 8)
    assert out["attention_mask"].sum(dim=1).tolist() == [3, 1]
    assert collate([[1, 2, 3]], pad_id=0)["input_ids"].shape == (1, 3)  # no multiple: the longest decides


def test_batching_on_a_gpu_uses_a_token_budget_unless_a_batch_size_is_given():
    gpu = batching_for(CUDA, None)
    assert (gpu.batch_size, gpu.max_tokens, gpu.pad_multiple) == (GPU_MAX_BATCH, GPU_TOKEN_BUDGET, 8)
    fixed = batching_for(CUDA, 32)
    assert (fixed.batch_size, fixed.max_tokens, fixed.pad_multiple) == (32, None, 8)
    cpu = batching_for(CPU, None, default=16)
    assert (cpu.batch_size, cpu.max_tokens, cpu.pad_multiple) == (16, None, 1)
    assert batching_for(CPU, 5).batch_size == 5
    assert (pad_multiple_for(CUDA), pad_multiple_for(CPU)) == (8, 1)


@pytest.mark.parametrize(("device", "bf16_ok", "requested", "expected"), [
    ("cuda", True, "auto", "bf16"),
    ("cuda", False, "auto", "fp32"),
    ("cuda", True, "fp32", "fp32"),
    ("cpu", True, "bf16", "bf16"),
])
def test_inference_precision_by_device(monkeypatch, device, bf16_ok, requested, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert inference_precision(requested, torch.device(device)).name == expected


@pytest.mark.parametrize(("add", "hide", "requested", "expected"), [
    ("amx_bf16,amx_int8,avx512_bf16", "", "auto", "bf16"),  # an AMX Xeon: bf16 matrix tiles
    ("amx_bf16,amx_int8,avx512_bf16", "", "fp32", "fp32"),  # --precision fp32 opts out
    ("avx512_bf16", "amx*", "auto", "fp32"),  # AVX512-BF16 without AMX: not measured to pay, fp32
    ("", "avx512*,amx*", "auto", "fp32"),  # AVX2 only
    ("amx_bf16", "avx512*,amx*", "auto", "fp32"),  # hiding wins over adding (the avx2 mode on any machine)
])
def test_cpu_inference_precision_follows_the_cpu_flags(monkeypatch, add, hide, requested, expected):
    monkeypatch.setenv("MEDCLF_ADD_CPU_FLAGS", add)
    monkeypatch.setenv("MEDCLF_HIDE_CPU_FLAGS", hide)
    assert inference_precision(requested, CPU).name == expected


def test_a_run_trained_on_an_amx_cpu_is_evaluated_as_it_predicts_there(monkeypatch, tmp_path, tiny_model, small_csv):
    """Validation and test passes use inference's precision choice, so the run's test figures are what `predict`
    gives on that machine; the run says which precision they were measured at."""
    import json

    from medclf import TrainConfig, train

    monkeypatch.setenv("MEDCLF_ADD_CPU_FLAGS", "amx_bf16,avx512_bf16")
    monkeypatch.setenv("MEDCLF_HIDE_CPU_FLAGS", "")
    out = tmp_path / "run"
    train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(out), epochs=8, lr=3e-3, batch_size=8, max_length=32,
                      few_shot="off"), progress=False)
    spec = json.loads((out / "train_config.json").read_text())["run"]
    assert spec["precision"] == "bf16" and spec["evaluation_precision"] == "bf16"
    assert "validation and test figures at bf16" in (out / "report.md").read_text()
    clf = TextClassifier.load(out)
    assert clf.precision.name == "bf16"
    import pandas as pd

    saved = pd.read_csv(out / "predictions_test.csv")
    # the same texts, predicted again at the default precision there: the saved test probabilities (6 decimals)
    rows = saved["row"].tolist()
    texts = pd.read_csv(small_csv)["text"].iloc[rows].tolist()
    probs = clf.predict_proba(texts)
    kept = saved[[f"prob_{lab}" for lab in clf.labels]].to_numpy(float)
    np.testing.assert_allclose(probs, kept, atol=2e-6)  # (fp32 differs from them by about 5e-5 here)


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(MedclfError, match="does not support bf16"):
        inference_precision("bf16", CUDA)


def test_to_device_on_a_cpu_keeps_the_values():
    inputs = collate([[5, 6], [7]], pad_id=0)
    moved = to_device(inputs, CPU)
    assert all(torch.equal(inputs[k], moved[k]) for k in inputs)


def test_load_options_take_a_precision_and_no_batch_size(trained_run):
    assert LoadOptions().batch_size is None and LoadOptions().precision == "auto"
    with pytest.raises(MedclfError, match="precision must be one of"):
        LoadOptions(precision="fp16")
    clf = TextClassifier.load(trained_run, LoadOptions(precision="bf16"))
    assert clf.precision.name == "bf16"
    texts = [r["text"] for r in make_rows(3)]
    fp32 = TextClassifier.load(trained_run, LoadOptions(precision="fp32"))
    assert fp32.precision.name == "fp32" and fp32.batch_size is None
    # bf16 autocast keeps the probabilities near fp32's (bf16 has 8 bits of mantissa)
    np.testing.assert_allclose(clf.predict_proba(texts), fp32.predict_proba(texts), atol=0.05)


def test_batches_are_the_same_whatever_their_size(trained_run):
    """Logits gathered on the device and copied once give what batch-by-batch copies gave."""
    texts = [r["text"] for r in make_rows(7)]
    clf = TextClassifier.load(trained_run)
    one = np.stack([clf.predict_proba(t) for t in texts])
    np.testing.assert_allclose(clf.predict_proba(texts, batch_size=4), one, atol=1e-5)
    np.testing.assert_allclose(clf.predict_proba(texts), one, atol=1e-5)


def test_predict_refuses_an_unknown_precision_in_one_sentence(trained_run):
    result = CliRunner().invoke(app, ["predict", str(trained_run), "a note", "--precision", "fp8"])
    assert result.exit_code == 2
    assert "precision must be one of auto, fp32, bf16" in result.output and "Traceback" not in result.output


def test_the_baseline_fitted_in_the_background_is_the_one_fitted_in_the_foreground():
    rows = make_rows(12)
    texts = [r["text"] for r in rows]
    labels = sorted({r["label"] for r in rows})
    y = np.array([labels.index(r["label"]) for r in rows])
    here = start_tfidf(texts[:30], y[:30], texts[30:], len(labels), multi_label=False, background=False)()
    there = start_tfidf(texts[:30], y[:30], texts[30:], len(labels), multi_label=False, background=True)()
    assert here is not None and there is not None
    np.testing.assert_allclose(here, there, atol=1e-12)



@pytest.mark.parametrize("long_text", ["head-tail", "chunk"])
def test_tokenizing_ahead_gives_what_tokenizing_at_once_gives(trained_run, monkeypatch, long_text):
    """On a GPU the next slice of texts is tokenized while the model runs this one (mocked here on the CPU, slices of
    5 texts): the same probabilities, and in chunk mode the same windows pointed at."""
    import medclf.inference.classifier as classifier

    rows = make_rows(6)
    texts = [r["text"] + (" more words here" * (i % 4) * 20) for i, r in enumerate(rows)]
    clf = TextClassifier.load(trained_run, long_text=long_text)
    first = clf.predictions(texts)
    at_once, windows = first.probabilities, first.windows
    monkeypatch.setattr(classifier, "TOKENIZE_AHEAD", 5)
    monkeypatch.setattr(TextClassifier, "_overlap_tokenizing", lambda self: True)
    second = clf.predictions(texts)
    ahead, windows_ahead = second.probabilities, second.windows
    np.testing.assert_allclose(ahead, at_once, atol=1e-6)
    assert windows_ahead == windows
    if long_text == "chunk":
        assert any(w is not None for w in windows)
