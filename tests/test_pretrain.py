"""`medclf pretrain`: continued masked-LM training on a tiny random BERT; the checkpoint loads as a masked LM and as
`medclf train --model`; bad inputs get one sentence."""

import json

import torch
from conftest import SECRET
from typer.testing import CliRunner

from medclf.cli.main import app

runner = CliRunner()
TOY = ["the patient has chest pain and a high troponin", "an itchy rash with red plaques on the skin",
       "a seizure with headache and weakness of the arm", "the heart murmur and palpitations got worse"]


def _corpus(path, repeat=12):
    path.write_text("\n".join(f"{t} {SECRET}" for _ in range(repeat) for t in TOY) + "\n", encoding="utf-8")
    return path


def test_pretraining_lowers_the_held_out_loss_and_the_checkpoint_loads_everywhere(tmp_path, tiny_model, small_csv):
    from transformers import AutoModel, AutoModelForMaskedLM

    out = tmp_path / "pre"
    result = runner.invoke(app, ["pretrain", "--data", str(_corpus(tmp_path / "notes.txt")), "--model", tiny_model,
                                 "--output", str(out), "--epochs", "15", "--lr", "3e-3", "--max-length", "24",
                                 "--precision", "fp32", "--head-warmup-steps", "5"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    # a repeated toy corpus: the masked words are predictable, so the held-out loss must fall clearly
    assert metrics["held_out_mlm_loss_after"] < 0.7 * metrics["held_out_mlm_loss_before"]
    assert metrics["perplexity_after"] < metrics["perplexity_before"]
    assert metrics["head_warmup_steps"] == 5 and metrics["optimizer_steps"] > 0
    log = (out / "train.log").read_text()
    assert "MLM head trained alone for 5 steps" in log and SECRET not in log
    assert AutoModelForMaskedLM.from_pretrained(out / "model") is not None
    # the source encoder's pooler travels with the checkpoint, unchanged
    source, adapted = AutoModel.from_pretrained(tiny_model), AutoModel.from_pretrained(out / "model")
    assert torch.equal(source.pooler.dense.weight, adapted.pooler.dense.weight)
    assert not torch.equal(source.embeddings.word_embeddings.weight, adapted.embeddings.word_embeddings.weight)
    trained = runner.invoke(app, ["train", "--data", str(small_csv), "--model", str(out / "model"), "--output",
                                  str(tmp_path / "clf"), "--max-steps", "2"])
    assert trained.exit_code == 0, trained.output


def test_whole_word_masking_and_a_table_with_a_label_column(tmp_path, tiny_model, small_csv):
    out = tmp_path / "wwm"
    result = runner.invoke(app, ["pretrain", "--data", str(small_csv), "--text-column", "text", "--model", tiny_model,
                                 "--output", str(out), "--max-steps", "3", "--whole-word-masking", "--max-length", "24"])
    assert result.exit_code == 0, result.output
    assert "whole-word masking" in (out / "train.log").read_text()


def test_bad_pretraining_inputs_get_one_sentence(tmp_path, tiny_model):
    empty = tmp_path / "gaps.csv"
    empty.write_text("text,source\nfirst note,a\n,b\nthird note,c\n", encoding="utf-8")
    one = tmp_path / "one.txt"
    one.write_text("only one note\n", encoding="utf-8")
    for data, message in ((empty, "empty text"), (one, "needs at least 2"), (tmp_path / "missing.txt", "not found")):
        result = runner.invoke(app, ["pretrain", "--data", str(data), "--model", tiny_model, "--output",
                                     str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
    bad = runner.invoke(app, ["pretrain", "--data", str(one), "--mlm-probability", "1.5"])
    assert bad.exit_code == 2 and "mlm_probability must be between 0 and 1" in bad.output


def test_fp16_pretraining_steps_through_the_gradient_scaler(tmp_path, tiny_model, monkeypatch):
    """Where fp16 is chosen (a CUDA GPU without bf16), pretraining's steps go through the gradient scaler, as
    fine-tuning's do: both run the one step loop. fp16 is forced here on the CPU (autocast fp16 runs there too)."""
    import medclf.training.loop
    import medclf.training.pretrain
    from medclf.model.modeling import PrecisionChoice

    scalers = []

    class Recording(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            scalers.append(self)

    monkeypatch.setattr(medclf.training.pretrain, "choose_precision", lambda *a: PrecisionChoice("fp16", "test"))
    monkeypatch.setattr(medclf.training.loop.torch.amp, "GradScaler", Recording)
    out = tmp_path / "pre"
    result = runner.invoke(app, ["pretrain", "--data", str(_corpus(tmp_path / "notes.txt")), "--model", tiny_model,
                                 "--output", str(out), "--epochs", "4", "--lr", "3e-3", "--max-length", "24",
                                 "--head-warmup-steps", "2"])
    assert result.exit_code == 0, result.output
    assert len(scalers) == 2 and all(s.is_enabled() for s in scalers), "the head warmup and the main phase"
    assert all(s.get_scale() > 0 for s in scalers)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "fp16" and metrics["held_out_mlm_loss_after"] < metrics["held_out_mlm_loss_before"]
