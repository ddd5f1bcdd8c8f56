"""The reference a careful user would write with Hugging Face `Trainer` (for side-by-side benchmarks).

python benchmarks/accuracy/reference_trainer.py --train SPLIT/train.csv --test SPLIT/test.csv \
    [--model default] [--epochs 3] [--lr 2e-5] [--bf16] [--result bench-out/trainer.json]

AutoTokenizer + AutoModelForSequenceClassification + DataCollatorWithPadding, the packaged encoder
by default, batch 16, max length 256, lr 2e-5, Trainer's defaults otherwise (AdamW, linear decay,
fp32 on CPU; `--bf16` sets `bf16=True`, what a careful user sets on a GPU). Trains on the whole training file, predicts the test file, and writes a JSON result:
accuracy, macro-F1, training-loop seconds and samples/s (Trainer's own count), peak RSS.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import model_source, peak_rss_gib, read_split, scores, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="CSV with columns text, label")
    parser.add_argument("--test", required=True, help="CSV with columns text, label")
    parser.add_argument("--model", default="default", help="'default' (packaged MiniLM) or a model directory")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true", help="TrainingArguments(bf16=True): bf16 mixed precision")
    parser.add_argument("--result", default="bench-out/trainer.json")
    args = parser.parse_args(argv)

    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    train_texts, train_labels = read_split(args.train)
    test_texts, test_labels = read_split(args.test)
    labels = sorted(set(train_labels))
    label_id = {lab: i for i, lab in enumerate(labels)}
    source = model_source(args.model)
    tokenizer = AutoTokenizer.from_pretrained(source)

    def dataset(texts: list[str], tags: list[str]) -> list[dict]:
        enc = tokenizer(texts, truncation=True, max_length=args.max_length)
        return [{"input_ids": ids, "attention_mask": mask, "labels": label_id[tag]}
                for ids, mask, tag in zip(enc["input_ids"], enc["attention_mask"], tags, strict=True)]

    train_ds, test_ds = dataset(train_texts, train_labels), dataset(test_texts, test_labels)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_id)
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch, num_train_epochs=args.epochs, learning_rate=args.lr,
            per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, max_steps=args.max_steps,
            seed=args.seed, save_strategy="no", report_to=[], logging_steps=50,
            use_cpu=not torch.cuda.is_available(), disable_tqdm=True, bf16=args.bf16,
        )
        trainer = Trainer(model=model, args=training_args, train_dataset=train_ds,
                          data_collator=DataCollatorWithPadding(tokenizer))
        start = time.perf_counter()
        result = trainer.train()
        train_seconds = time.perf_counter() - start
        logits = trainer.predict(test_ds).predictions
    predicted = [labels[i] for i in np.asarray(logits).argmax(axis=1)]
    write_result(args.result, {
        "system": "hf-trainer",
        "lr": args.lr,
        "epochs": args.epochs,
        **scores(test_labels, predicted),
        "train_loop_seconds": train_seconds,
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "peak_rss_gib": peak_rss_gib(),
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "bf16": args.bf16,
        "n_train": len(train_texts),
        "n_test": len(test_texts),
    })


if __name__ == "__main__":
    main()
