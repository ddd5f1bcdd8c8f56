"""The fine-tuning step loop as events (training.loop), its schedule, and the selection around it (training.finetune)."""

import numpy as np
import pytest
import torch
from conftest import make_rows
from transformers import AutoTokenizer

from medclf.config import TrainConfig
from medclf.model.batching import encode
from medclf.model.modeling import choose_precision, load_classifier
from medclf.training.finetune import Keeper
from medclf.training.loop import EpochDone, Schedule, StepDone, classification_loss, train_epochs

LABELS = ["cardio", "derm", "neuro"]


def _setup(tiny_model, n_per_class=8):
    rows = make_rows(n_per_class)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    enc = encode(tok, [r["text"] for r in rows], max_length=32)
    y = np.array([LABELS.index(r["label"]) for r in rows])
    torch.manual_seed(0)
    return load_classifier(tiny_model, labels=LABELS), enc, y


def _events(model, enc, y, config):
    schedule = Schedule.plan(config, n_train=enc.n_docs)
    precision, cpu = choose_precision("fp32", torch.device("cpu")), torch.device("cpu")
    loss = classification_loss(enc, y, loss_fn=torch.nn.CrossEntropyLoss(), config=config, precision=precision,
                               pad_id=0, device=cpu)
    return schedule, train_epochs(model, enc.doc_lengths, loss, config=config, schedule=schedule, precision=precision,
                                  device=cpu)


@pytest.mark.parametrize(("n", "batch", "accum", "epochs", "max_steps", "expected"), [
    (24, 8, 1, 3, None, (3, 9, 3)),    # 3 batches an epoch, one step each
    (25, 8, 2, 3, None, (2, 6, 3)),    # 4 batches (the last of 1 text) in groups of 2
    (24, 8, 1, 3, 4, (3, 4, 2)),       # max_steps cuts the schedule inside epoch 2
], ids=["plain", "accumulation", "max-steps"])
def test_schedule_counts_optimizer_steps_and_epochs(n, batch, accum, epochs, max_steps, expected):
    config = TrainConfig(batch_size=batch, grad_accum=accum, epochs=epochs, max_steps=max_steps, warmup_ratio=0.25)
    s = Schedule.plan(config, n_train=n)
    assert (s.steps_per_epoch, s.total_steps, s.epochs) == expected
    factors = [s.lr_factor(i) for i in range(s.total_steps)]
    peak = max(range(len(factors)), key=factors.__getitem__)
    assert all(a <= b for a, b in zip(factors[:peak], factors[1:peak + 1])), "warmup rises"
    assert all(a >= b for a, b in zip(factors[peak:], factors[peak + 1:])), "then decays"
    assert s.lr_factor(s.total_steps) == 0.0


def test_the_loop_yields_a_step_per_batch_and_an_epoch_end_per_epoch(tiny_model):
    model, enc, y = _setup(tiny_model)
    config = TrainConfig(batch_size=8, epochs=2, lr=1e-3, warmup_ratio=0.0)
    schedule, events = _events(model, enc, y, config)
    seen = list(events)
    steps = [e for e in seen if isinstance(e, StepDone)]
    ends = [e for e in seen if isinstance(e, EpochDone)]
    assert [e.epoch for e in ends] == [1, 2] and ends[-1].last and not ends[0].last
    assert len(steps) == 2 * 3 and [s.batch for s in steps[:3]] == [1, 2, 3] and steps[0].n_batches == 3
    assert ends[-1].step == schedule.total_steps == 6
    assert all(e.samples == len(y) and e.tokens > 0 and e.seconds > 0 for e in ends)
    # the epoch's mean loss is the mean of its batches' losses (read once per epoch, not per step)
    assert ends[0].train_loss == pytest.approx(float(torch.stack([s.loss for s in steps[:3]]).mean()), rel=1e-5)
    assert ends[-1].lr == 0.0  # linear decay to zero at the last step
    assert model.training  # left in train mode, as the caller found it at each epoch end


def test_leaving_the_loop_stops_training(tiny_model):
    model, enc, y = _setup(tiny_model)
    _, events = _events(model, enc, y, TrainConfig(batch_size=8, epochs=5, lr=1e-3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for event in events:
        if isinstance(event, EpochDone):
            break
    after_one = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(not torch.equal(before[k], after_one[k]) for k in before)
    events.close()
    assert all(torch.equal(after_one[k], v) for k, v in model.state_dict().items())  # no step after leaving


def test_the_keeper_keeps_the_best_epoch_and_puts_it_back(tiny_model):
    model, _, _ = _setup(tiny_model)
    keeper = Keeper(model, average=False)
    f1s = iter([0.5, 0.8, 0.6])
    snapshots = []
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model.classifier.bias.fill_(float(epoch))
        snapshots.append(model.classifier.bias.clone())
        f1 = next(f1s)
        row = keeper.epoch_end(EpochDone(epoch=epoch, step=epoch, train_loss=1.0, seconds=1.0, samples=4, tokens=40,
                                         lr=0.0, last=epoch == 3),
                               validate=lambda f1=f1: {"loss": 1.0, "accuracy": f1, "macro_f1": f1}, task=_single())
        assert row["val_macro_f1"] == f1 and keeper.improved == (epoch in (1, 2))
    assert (keeper.best_epoch, keeper.best_name, keeper.best_f1) == (2, "epoch 2", 0.8)
    assert keeper.restore()
    assert torch.equal(model.classifier.bias, snapshots[1])


def test_the_keeper_can_choose_the_average_of_epochs(tiny_model):
    model, _, _ = _setup(tiny_model)
    keeper = Keeper(model, average=True)
    for epoch, value in ((1, 0.0), (2, 2.0)):
        with torch.no_grad():
            model.classifier.bias.fill_(value)

        def validate():  # the averaged weights (bias 1.0) validate best
            f1 = 0.9 if torch.allclose(model.classifier.bias, torch.ones(3)) else 0.3
            return {"loss": 1.0, "accuracy": f1, "macro_f1": f1}

        keeper.epoch_end(EpochDone(epoch=epoch, step=epoch, train_loss=1.0, seconds=1.0, samples=4, tokens=40, lr=0.0,
                                   last=epoch == 2), validate=validate, task=_single())
    assert keeper.best_name == "average of epochs 1-2"
    assert torch.equal(model.classifier.bias, torch.full((3,), 2.0))  # the current weights were put back after validating
    keeper.restore()
    assert torch.allclose(model.classifier.bias, torch.ones(3))


def _single():
    from medclf.core.tasks import SINGLE_LABEL

    return SINGLE_LABEL
