"""Training with a tiny random-init BERT: overfit, save/load, reproducibility, atomic runs."""

import json

import numpy as np
import pytest
import torch
from conftest import SECRET, make_rows, write_csv

from medclf import MedclfError, TextClassifier, TrainConfig, train
from medclf.run.artifacts import is_run_dir


def test_tiny_model_overfits_ten_rows_and_save_load_keeps_predictions(tmp_path, tiny_model):
    rows = make_rows(5, labels=("cardio", "derm"))
    path = write_csv(tmp_path / "ten.csv", rows)
    config = TrainConfig(
        data=str(path), test_data=str(path), val_data=str(path), model=tiny_model, output=str(tmp_path / "run"),
        epochs=40, lr=5e-3, batch_size=4, warmup_ratio=0.0, precision="fp32",
    )
    result = train(config, progress=False)
    assert result.test_metrics["accuracy"] == 1.0
    texts = [r["text"] for r in rows]
    clf = TextClassifier.load(result.run_dir)
    assert clf.labels == ["cardio", "derm"]
    assert clf.predict(texts) == [r["label"] for r in rows]
    # The same predictions after a save/load round trip as from the probabilities written at training time.
    import pandas as pd

    written = pd.read_csv(result.run_dir / "predictions_test.csv")
    assert (written["predicted"] == written["label"]).all()
    np.testing.assert_allclose(
        clf.predict_proba(texts)[written["row"].tolist()],
        written[[f"prob_{lab}" for lab in clf.labels]].to_numpy(), atol=1e-5,
    )


def test_run_directory_is_self_describing_and_loads_with_plain_transformers(trained_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert is_run_dir(trained_run)
    for name in ["train_config.json", "metrics.json", "report.md", "confusion_matrix.png", "predictions_test.csv",
                 "train.log", "model/model.safetensors", "model/config.json", "model/tokenizer.json"]:
        assert (trained_run / name).is_file(), name
    log = (trained_run / "train.log").read_text()
    assert "precision" in log and "epoch 8/8" in log and "Test: accuracy" in log
    assert not list(trained_run.rglob("*.bin")) and not list(trained_run.rglob("*.pkl"))
    saved = json.loads((trained_run / "train_config.json").read_text())
    assert saved["config"]["epochs"] == 8
    assert saved["run"]["labels"] == ["cardio", "derm", "neuro"]
    assert set(saved["run"]["versions"]) >= {"torch", "transformers", "medclf"}
    assert len(saved["run"]["data_sha256"]["data"]) == 64

    model = AutoModelForSequenceClassification.from_pretrained(trained_run / "model")
    tokenizer = AutoTokenizer.from_pretrained(trained_run / "model")
    assert model.config.id2label == {0: "cardio", 1: "derm", 2: "neuro"}
    text = "patient has chest pain and troponin rise"
    with torch.inference_mode():
        plain = torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits, -1)[0].numpy()
    np.testing.assert_allclose(TextClassifier.load(trained_run).predict_proba(text), plain, atol=1e-5)


def test_nothing_in_the_run_holds_the_input_text(trained_run):
    for path in trained_run.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".md", ".csv", ".log"} and "tokenizer" not in path.name:
            assert SECRET not in path.read_text(encoding="utf-8"), path


def test_metrics_json_reports_what_a_user_checks(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    test = metrics["test"]
    assert {"accuracy", "macro_f1", "weighted_f1", "per_class", "confusion_matrix", "loss", "roc_auc_ovr_macro"} <= set(test)
    assert test["n"] == 12 and sum(map(sum, test["confusion_matrix"])) == 12
    assert metrics["data"]["n_train"] + metrics["data"]["n_val"] + test["n"] == 60
    assert len(metrics["history"]) == 8
    assert 1 <= metrics["best_epoch"] <= 8
    assert metrics["timing"]["train_samples_per_second"] > 0


def test_same_seed_same_metrics(tmp_path, tiny_model, small_csv):
    def run(name):
        config = TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / name), epochs=2, lr=1e-3,
                             few_shot="off")
        return train(config, progress=False).metrics

    first, second = run("a"), run("b")
    assert first["test"]["accuracy"] == second["test"]["accuracy"]
    assert first["test"]["loss"] == pytest.approx(second["test"]["loss"], rel=1e-6)
    assert [h["train_loss"] for h in first["history"]] == pytest.approx([h["train_loss"] for h in second["history"]], rel=1e-6)


def test_max_steps_stops_early(tmp_path, tiny_model, small_csv):
    config = TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "r"), epochs=5, max_steps=3)
    result = train(config, progress=False)
    assert result.metrics["timing"]["optimizer_steps"] == 3
    assert len(result.metrics["history"]) == 1


def test_existing_run_is_refused_unless_overwrite(tmp_path, tiny_model, small_csv):
    out = tmp_path / "r"
    base = dict(data=str(small_csv), model=tiny_model, output=str(out), max_steps=1)
    train(TrainConfig(**base), progress=False)
    with pytest.raises(MedclfError, match="already holds a run; pass --overwrite"):
        train(TrainConfig(**base), progress=False)
    train(TrainConfig(**base, overwrite=True, seed=7), progress=False)
    assert json.loads((out / "train_config.json").read_text())["config"]["seed"] == 7


def test_a_run_killed_while_writing_leaves_no_loadable_run(tmp_path, tiny_model, small_csv, monkeypatch):
    import medclf.training.pipeline

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(medclf.training.pipeline, "write_report", boom)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(out), max_steps=1), progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MedclfError, match="does not exist"):
        TextClassifier.load(out)


def test_test_labels_never_seen_in_training_are_named(tmp_path, tiny_model, small_csv):
    other = write_csv(tmp_path / "test.csv", make_rows(2, labels=("cardio", "derm")) + [
        {"note_id": "x", "text": "a new thing", "label": "oncology"}])
    config = TrainConfig(data=str(small_csv), test_data=str(other), model=tiny_model, output=str(tmp_path / "r"))
    with pytest.raises(MedclfError, match=r"1 label\(s\) never seen in training \('oncology'\)"):
        train(config, progress=False)


def test_predict_api_follows_sklearn_habits(trained_run):
    clf = TextClassifier.load(trained_run)
    one = clf.predict("chest pain and troponin")
    many = clf.predict(["chest pain", "itchy rash", "seizure"])
    assert isinstance(one, str) and one in clf.labels
    assert isinstance(many, list) and len(many) == 3
    proba = clf.predict_proba(["a", "b b b b b b b b b", "c"])
    assert proba.shape == (3, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert clf.predict_proba("a").shape == (3,)
    # Order of the inputs is kept although batches are sorted by length.
    np.testing.assert_allclose(proba[1], clf.predict_proba("b b b b b b b b b"), atol=1e-6)
    assert clf.predict([]) == []
    with pytest.raises(MedclfError, match="not a string"):
        clf.predict([None])


def test_loading_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(MedclfError, match="not a medclf run directory"):
        TextClassifier.load(tmp_path)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_probe_head_init_copies_the_fitted_probe_into_the_head(tiny_model, n_classes, monkeypatch):
    """The head ends up computing the decision of a logistic regression fitted on the frozen features it receives.
    Compared on the features the probe saw: a tiny random encoder gives nearly equal features for every text, so
    features recomputed in other batch shapes (other rounding, AVX2 vs AVX-512) can flip a near-tie of the probe."""
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoTokenizer

    import medclf.model.embeddings
    from medclf.model.batching import collate, encode
    from medclf.model.modeling import load_classifier
    from medclf.training.finetune import fit_head_on_frozen_features

    seen = {}
    fit = medclf.model.embeddings.fit_logistic
    monkeypatch.setattr(medclf.model.embeddings, "fit_logistic", lambda x, y, *a, **k: seen.update(x=x.copy(), y=y) or fit(x, y, *a, **k))
    labels = ("cardio", "derm", "neuro")[:n_classes]
    rows = make_rows(10, labels=labels)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = load_classifier(tiny_model, labels=list(labels))
    ids = encode(tok, [r["text"] for r in rows], max_length=64).input_ids
    y = np.array([labels.index(r["label"]) for r in rows])
    assert fit_head_on_frozen_features(model, ids, y, pad_id=0, device=torch.device("cpu"), batch_size=7,
                                       class_weight=None, seed=0)
    features = seen["x"]
    assert features.shape == (len(rows), model.config.hidden_size) and np.array_equal(seen["y"], y)
    probe = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(features, y)
    model.eval()
    with torch.inference_mode():
        head_logits = model.classifier(torch.as_tensor(features))
        # the features are the classifier's input: the pooled [CLS] output of the frozen encoder
        batch = collate(ids, 0)
        np.testing.assert_allclose(model.bert(**batch).pooler_output.numpy(), features, atol=1e-4)
        np.testing.assert_allclose(model(**batch).logits.numpy(), model.classifier(model.bert(**batch).pooler_output).numpy(),
                                   atol=1e-6)
    # The head now computes the probe's decision: same predicted classes, same probabilities.
    np.testing.assert_array_equal(head_logits.argmax(-1).numpy(), probe.predict(features))
    np.testing.assert_allclose(torch.softmax(head_logits, -1).numpy(), probe.predict_proba(features), atol=1e-4)


def test_training_with_linear_probe_init_is_logged(tmp_path, tiny_model, small_csv):
    config = TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "r"), max_steps=2,
                         head_init="linear-probe")
    result = train(config, progress=False)
    assert "Head initialised by a linear probe" in (result.run_dir / "train.log").read_text()
    assert result.metrics["timing"]["head_init_seconds"] > 0


def test_overwrite_never_replaces_a_folder_that_is_not_a_run(tmp_path, tiny_model, small_csv):
    keep = tmp_path / "my-documents"
    keep.mkdir()
    (keep / "thesis.docx").write_text("precious")
    config = TrainConfig(data=str(small_csv), model=tiny_model, output=str(keep), max_steps=1, overwrite=True)
    with pytest.raises(MedclfError, match="not a medclf run"):
        train(config, progress=False)
    assert (keep / "thesis.docx").read_text() == "precious"


def test_the_run_remembers_how_texts_were_cut(tmp_path, tiny_model, small_csv):
    config = TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "r"), max_steps=1,
                         max_length=12, long_text="head-tail")
    result = train(config, progress=False)
    clf = TextClassifier.load(result.run_dir)
    assert (clf.max_length, clf.long_text) == (12, "head-tail")
    assert result.metrics["data"]["truncation"]["train"]["texts_cut"] > 0


def test_speed_options_freeze_the_embeddings_and_drop_attention_dropout(tmp_path, tiny_model, small_csv):
    """Defaults: the embedding block is not trained, attention dropout is 0 (fused attention); both recorded."""
    from transformers import AutoModelForSequenceClassification, BertModel

    config = TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "r"), max_steps=4, lr=1e-2,
                         head_init="random")
    result = train(config, progress=False)
    trained = AutoModelForSequenceClassification.from_pretrained(result.run_dir / "model")
    original = BertModel.from_pretrained(tiny_model)
    for name, param in original.embeddings.state_dict().items():
        assert torch.equal(param, trained.bert.embeddings.state_dict()[name]), name
    changed = [n for n, p in original.encoder.state_dict().items()
               if not torch.equal(p, trained.bert.encoder.state_dict()[n])]
    assert changed, "the encoder layers should have been trained"
    assert trained.config.attention_probs_dropout_prob == 0.0
    assert "Embedding block frozen" in (result.run_dir / "train.log").read_text()


def test_training_the_embeddings_and_keeping_attention_dropout_are_options(tmp_path, tiny_model, small_csv):
    from transformers import AutoModelForSequenceClassification, BertModel

    config = TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "r"), max_steps=4, lr=1e-2,
                         head_init="random", freeze_embeddings=False, attention_dropout=None)
    result = train(config, progress=False)
    trained = AutoModelForSequenceClassification.from_pretrained(result.run_dir / "model")
    original = BertModel.from_pretrained(tiny_model)
    assert not torch.equal(original.embeddings.word_embeddings.weight, trained.bert.embeddings.word_embeddings.weight)
    assert trained.config.attention_probs_dropout_prob == original.config.attention_probs_dropout_prob


def test_patience_stops_when_validation_stops_improving(tmp_path, tiny_model, small_csv):
    # With a vanishing learning rate validation macro-F1 cannot improve after epoch 1: stop after epoch 2.
    config = TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "r"), epochs=6, lr=1e-12, few_shot="off",
                         patience=1, head_init="random")
    result = train(config, progress=False)
    assert [row["epoch"] for row in result.metrics["history"]] == [1, 2]
    assert result.metrics["best_epoch"] == 1
    assert "Early stop" in (result.run_dir / "train.log").read_text()


def test_weight_average_is_the_running_mean_of_the_trainable_weights():
    from medclf.training.finetune import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[1].requires_grad_(False)
    frozen = model[1].weight.detach().clone()
    seen = []
    average = WeightAverage()
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            model[0].weight.fill_(value)
        seen.append(value)
        average.add(model)
    assert average.count == 3 and set(average.mean) == {"0.weight", "0.bias"}
    current = average.swap_in(model)
    assert torch.allclose(model[0].weight, torch.full((2, 2), 3.0))
    assert torch.equal(model[1].weight, frozen)
    average.restore(model, current)
    assert torch.allclose(model[0].weight, torch.full((2, 2), 6.0))


def test_averaged_weights_compete_with_single_epochs_and_the_choice_is_recorded(tmp_path, tiny_model, small_csv):
    config = TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "r"), epochs=3, lr=3e-3, few_shot="off",
                         batch_size=8)
    result = train(config, progress=False)
    history = result.metrics["history"]
    assert "avg_val_macro_f1" not in history[0] and all("avg_val_macro_f1" in row for row in history[1:])
    selected = result.metrics["selected"]
    candidates = {f"epoch {row['epoch']}": row["val_macro_f1"] for row in history}
    candidates.update({f"average of epochs 1-{row['epoch']}": row["avg_val_macro_f1"] for row in history[1:]})
    assert selected in candidates
    assert result.metrics["validation"]["macro_f1"] == pytest.approx(max(candidates.values()))
    assert f"Kept the {selected}" in (result.run_dir / "train.log").read_text()


def test_gradient_accumulation_counts_optimizer_steps_and_states_the_effective_batch(tmp_path, tiny_model, small_csv):
    # 60 rows -> 43 training rows -> 11 batches of 4 per epoch -> 4 optimizer steps of up to 3 batches
    result = train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "run"), epochs=2,
                               batch_size=4, grad_accum=3, max_length=32, few_shot="off"), progress=False)
    assert result.metrics["timing"]["optimizer_steps"] == 8
    assert [row["step"] for row in result.metrics["history"]] == [4, 8]
    assert "Effective batch size 12 (batch 4 x 1 process(es) x gradient accumulation 3)" in (
        result.run_dir / "train.log").read_text()
    capped = train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "capped"), epochs=2,
                               batch_size=4, grad_accum=3, max_steps=5, max_length=32), progress=False)
    assert capped.metrics["timing"]["optimizer_steps"] == 5
    with pytest.raises(MedclfError, match="grad_accum must be a positive integer"):
        TrainConfig(grad_accum=0)


def test_few_labels_change_how_weights_are_chosen_and_the_log_says_so(tmp_path, tiny_model, small_csv):
    """small_csv gives ~14 training rows per class and 5 validation rows: validation cannot rank weights (auto)."""
    result = train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "ft"), epochs=1,
                               max_length=32), progress=False)
    log = (result.run_dir / "train.log").read_text()
    assert "Few labels: the validation part has 5 row(s), fewer than the 30 that can rank weights" in log
    assert result.metrics["few_shot"] is True
    steps = result.metrics["timing"]["optimizer_steps"]
    assert steps >= 50  # 1 epoch of 3 steps was asked for; at least 50 are taken
    epochs = len(result.metrics["history"])
    assert result.metrics["selected"] == f"average of epochs 1-{epochs}"  # all epochs (default averaging), not the best on 5 rows
    assert "not chosen on validation" in log

    emb = train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "emb"), method="embeddings"),
                progress=False)
    assert all("cv_macro_f1" in row for row in emb.metrics["history"])
    assert "chosen by cross-validation on the training rows" in (emb.run_dir / "report.md").read_text()

    off = train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "off"), epochs=1,
                            max_length=32, few_shot="off"), progress=False)
    assert off.metrics["few_shot"] is False and off.metrics["timing"]["optimizer_steps"] == 3
    assert "Few labels" not in (off.run_dir / "train.log").read_text()


def test_an_imbalanced_full_table_is_not_a_few_labels_run(tmp_path, tiny_model):
    """One class with 10 rows in a table of 410: validation (33 rows) can rank weights, so the rule stays off and
    says why; weights are chosen on validation."""
    rows = make_rows(200, labels=("cardio", "derm", "neuro"))
    rare = [r for r in rows if r["label"] == "neuro"][:10]
    data = write_csv(tmp_path / "imbalanced.csv", [r for r in rows if r["label"] != "neuro"] + rare)
    emb = train(TrainConfig(data=str(data), model=tiny_model, output=str(tmp_path / "emb"), method="embeddings",
                            max_length=32), progress=False)
    assert emb.metrics["few_shot"] is False
    assert not any("cv_macro_f1" in row for row in emb.metrics["history"])  # C chosen on validation
    log = (emb.run_dir / "train.log").read_text()
    assert "Few-labels rule not applied: the validation part (33 rows) can rank weights" in log
    assert "Few labels:" not in log


def test_the_few_labels_rule_decides_from_what_validation_can_rank():
    from medclf.core.tasks import MULTI_LABEL, SINGLE_LABEL
    from medclf.training.fitting import FEW_SHOT_MIN_STEPS, FewLabels

    labels = ["a", "b", "c"]
    big = np.array([0] * 40 + [1] * 20)  # class c absent from validation: single-label macro-F1 still ranks
    assert not FewLabels.decide("auto", method="finetune", task=SINGLE_LABEL, y_val=big, labels=labels).applies
    small = FewLabels.decide("auto", method="embeddings", task=SINGLE_LABEL, y_val=big[:29], labels=labels)
    assert small.applies and small.min_steps == FEW_SHOT_MIN_STEPS and small.cross_validate
    assert not small.select_on_validation and not small.tune_thresholds and "29 row(s)" in small.note()
    multi = np.zeros((60, 3))
    multi[:, 0] = 1
    multi[:30, 1] = 1  # label c has no positive: its threshold cannot be tuned
    rule = FewLabels.decide("auto", method="finetune", task=MULTI_LABEL, y_val=multi, labels=labels)
    assert rule.applies and "'c'" in rule.reason
    multi[:5, 2] = 1
    assert not FewLabels.decide("auto", method="finetune", task=MULTI_LABEL, y_val=multi, labels=labels).applies
    assert FewLabels.decide("on", method="finetune", task=SINGLE_LABEL, y_val=big, labels=labels).applies
    assert not FewLabels.decide("off", method="finetune", task=SINGLE_LABEL, y_val=big[:3], labels=labels).applies
    assert not FewLabels.decide("auto", method="zero-shot", task=SINGLE_LABEL, y_val=big[:3], labels=labels).applies


def test_every_method_has_one_descriptor_that_names_its_fitting_function():
    """Adding a method is a function and one descriptor: --method's names are the descriptors', each descriptor's
    function exists, and what the report, card and runs table say comes from it."""
    from medclf.config import METHODS, TrainConfig
    from medclf.core.methods import FIT_METHODS, method_of
    from medclf.training.pipeline import fit_function

    assert tuple(FIT_METHODS) == METHODS
    config = TrainConfig(label_descriptions="descriptions.csv")
    for name, method in FIT_METHODS.items():
        assert callable(fit_function(method)) and method_of(name) is method
        assert method.describe(config) and method.options(config).startswith("- ") and method.runs_options(config)
        assert method.history in ("epoch", "C", None) and method.library_name in ("transformers", "medclf")
    assert [m for m in FIT_METHODS.values() if not m.selects] == [FIT_METHODS["zero-shot"]]
    assert "descriptions.csv" in method_of("zero-shot").describe(config)
