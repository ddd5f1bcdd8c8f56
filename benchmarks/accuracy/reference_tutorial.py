"""The tutorial's own recipe, as people copy it (for side-by-side benchmarks).

python benchmarks/accuracy/reference_tutorial.py --train SPLIT/train.csv --test SPLIT/test.csv \
    [--model default] [--steps 8 | --full] [--epochs 3] [--result bench-out/tutorial.json]

Every text padded to 512 tokens up front, a shuffled DataLoader of batch 16, plain Adam at 2e-5,
fp32, `loss.backward(); optimizer.step()`; the one fix over the tutorial is mapping string labels
to ids (the tutorial crashes on them). By default it times `--steps` optimizer steps after one
warm-up step and reports training samples/s (a full run of 3 epochs takes hours on 2 CPU cores);
with --full it trains all epochs and scores the test file with the tutorial's padded eval loop.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import model_source, peak_rss_gib, read_split, scores, write_result  # noqa: E402

PAD_TO = 512


def padded_predict(model: Any, tokenizer: Any, texts: list[str], labels: list[str], *, pad_to: int,
                   batch_size: int) -> list[str]:
    """The tutorial's eval loop: every text padded to `pad_to`, batches in input order, `torch.no_grad()`."""
    import torch

    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=pad_to, return_tensors="pt")
    predicted: list[str] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            logits = model(input_ids=enc["input_ids"][i : i + batch_size],
                           attention_mask=enc["attention_mask"][i : i + batch_size]).logits
            predicted += [labels[j] for j in logits.argmax(dim=1).tolist()]
    return predicted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps (throughput mode)")
    parser.add_argument("--full", action="store_true", help="train all epochs and score the test file")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--result", default="bench-out/tutorial.json")
    args = parser.parse_args(argv)

    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(args.seed)
    train_texts, train_labels = read_split(args.train)
    labels = sorted(set(train_labels))
    label_id = {lab: i for i, lab in enumerate(labels)}
    source = model_source(args.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(labels))
    pad_to = min(PAD_TO, model.config.max_position_embeddings)  # a tiny test model may have fewer positions
    enc = tokenizer(train_texts, padding="max_length", truncation=True, max_length=pad_to, return_tensors="pt")
    y = torch.tensor([label_id[lab] for lab in train_labels])
    loader = DataLoader(TensorDataset(enc["input_ids"], enc["attention_mask"], y), batch_size=16, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-5)

    def step(ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=target).loss
        loss.backward()
        optimizer.step()

    model.train()
    result: dict = {"system": "tutorial", "pad_to": pad_to, "n_train": len(train_texts)}
    if not args.full:
        if args.steps + 1 > len(loader):
            parser.error(f"--steps must be below {len(loader)} (the batches in one epoch) in throughput mode")
        batches = iter(loader)
        step(*next(batches))  # warm-up
        samples, start = 0, time.perf_counter()
        for _ in range(args.steps):
            ids, mask, target = next(batches)
            step(ids, mask, target)
            samples += len(target)
        seconds = time.perf_counter() - start
        rate = samples / seconds
        result.update({
            "mode": f"throughput over {args.steps} steps",
            "accuracy": None, "macro_f1": None,
            "train_loop_seconds": None,
            "train_seconds_projected": len(train_texts) * args.epochs / rate,
            "train_samples_per_second": rate,
        })
    else:
        start = time.perf_counter()
        for _ in range(args.epochs):
            for ids, mask, target in loader:
                step(ids, mask, target)
        seconds = time.perf_counter() - start
        test_texts, test_labels = read_split(args.test)
        predicted = padded_predict(model.eval(), tokenizer, test_texts, labels, pad_to=pad_to, batch_size=16)
        result.update({
            "mode": f"full, {args.epochs} epochs",
            **scores(test_labels, predicted),
            "train_loop_seconds": seconds,
            "train_samples_per_second": len(train_texts) * args.epochs / seconds,
        })
    result["peak_rss_gib"] = peak_rss_gib()
    write_result(args.result, result)


if __name__ == "__main__":
    main()
