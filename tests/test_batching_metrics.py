import numpy as np
import pytest
import torch

from medclf.core.metrics import classification_metrics, cross_entropy
from medclf.model.batching import collate, encode, length_grouped_batches, sorted_batches


def test_length_grouped_batches_cover_every_item_once_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, size=1000).tolist()
    batches = length_grouped_batches(lengths, 16, torch.Generator().manual_seed(1))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    again = length_grouped_batches(lengths, 16, torch.Generator().manual_seed(1))
    assert batches == again

    def padded(bs):
        return sum(max(lengths[i] for i in b) * len(b) for b in bs)

    order = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    random_batches = [order[i : i + 16] for i in range(0, 1000, 16)]
    assert padded(batches) < 0.6 * padded(random_batches)


def test_sorted_batches_and_collate_pad_per_batch():
    batches = sorted_batches([3, 9, 5, 1], 2)
    assert batches == [[1, 2], [0, 3]]
    out = collate([[101, 7, 102], [101, 102]], pad_id=0)
    assert out["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_encode_truncates_but_keeps_the_closing_token(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    enc = encode(tok, ["word " * 50, "short"], max_length=16)
    assert len(enc.input_ids[0]) == 16 and enc.input_ids[0][-1] == tok.sep_token_id
    assert enc.n_truncated == 1 and enc.tokens_lost == 52 - 16
    assert enc.input_ids[1] == tok("short")["input_ids"]


def test_head_tail_keeps_the_start_and_the_end(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    words = " ".join(f"w{i}" for i in range(100))
    full = tok(words)["input_ids"]
    enc = encode(tok, [words], max_length=18, long_text="head-tail")
    ids = enc.input_ids[0]
    assert len(ids) == 18 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids[1:5] == full[1:5]  # a quarter of the 16-token budget from the head
    assert ids[5:-1] == full[-13:-1]  # three quarters from the tail
    assert encode(tok, ["short text"], max_length=18, long_text="head-tail").input_ids[0] == tok("short text")["input_ids"]


def test_metrics_on_a_hand_made_case():
    labels = ["a", "b", "c"]
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([
        [0.8, 0.1, 0.1], [0.6, 0.3, 0.1],  # a, a: right
        [0.2, 0.7, 0.1], [0.5, 0.4, 0.1],  # b right, b predicted a
        [0.1, 0.1, 0.8], [0.1, 0.2, 0.7],  # c, c: right
    ])
    m = classification_metrics(y, probs, labels, loss=cross_entropy(probs, y))
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(0.5)
    f1_a, f1_b, f1_c = 0.8, 2 / 3, 1.0
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + f1_c) / 3)
    assert m["confusion_matrix"] == [[2, 0, 0], [1, 1, 0], [0, 0, 2]]
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.8, 0.6, 0.7, 0.4, 0.8, 0.7])))
    assert m["roc_auc_ovr"]["c"] == pytest.approx(1.0)


def test_macro_f1_ignores_a_class_absent_from_the_set():
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    m = classification_metrics(np.array([0, 1]), probs, ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx(1.0)
    assert m["per_class"]["c"]["support"] == 0
