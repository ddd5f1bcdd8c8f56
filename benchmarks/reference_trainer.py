"""The reference a careful user would write with Hugging Face `Trainer` (for side-by-side benchmarks).

python benchmarks/reference_trainer.py --data ../shared/data/medical-abstracts/medical_tc_test.csv \
    --text-column medical_abstract --label-column condition_label --epochs 3 --lr 2e-5 --out bench-out/trainer

Same split as medclf (stratified 80/20, seed 42, via medclf's own split function so the rows are the
same), same packaged encoder, AutoTokenizer + AutoModelForSequenceClassification +
DataCollatorWithPadding, batch 16, max length 256. Writes metrics.json with accuracy, macro-F1,
training wall time and samples/s, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="bench-out/trainer")
    args = parser.parse_args()

    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from medclf.data import check_classes, load_labeled, stratified_split
    from medclf.modeling import default_model_dir

    data = load_labeled(args.data, text_columns=[args.text_column], label_column=args.label_column, drop_empty=False)
    labels = check_classes(data.labels, source=args.data)
    train_idx, test_idx = stratified_split(data.labels, fraction=0.2, seed=args.seed, source=args.data,
                                           part="test", option="")
    label_id = {lab: i for i, lab in enumerate(labels)}
    source = str(default_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(source)

    def dataset(indices: list[int]) -> list[dict]:
        enc = tokenizer([data.texts[i] for i in indices], truncation=True, max_length=args.max_length)
        return [{"input_ids": enc["input_ids"][j], "attention_mask": enc["attention_mask"][j],
                 "labels": label_id[data.labels[i]]} for j, i in enumerate(indices)]

    train_ds, test_ds = dataset(train_idx), dataset(test_idx)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_id)
    out = Path(args.out)
    training_args = TrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=args.epochs, learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, max_steps=args.max_steps,
        seed=args.seed, save_strategy="no", report_to=[], logging_steps=50, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - start
    logits = trainer.predict(test_ds).predictions
    y_true, y_pred = np.array([row["labels"] for row in test_ds]), logits.argmax(axis=1)
    metrics = {
        "system": "hf-trainer",
        "lr": args.lr,
        "epochs": args.epochs,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
        "train_seconds": train_seconds,
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
