"""SetFit, as its README runs it, on a split file: the anchor of benchmarks/accuracy/few_labels.py.

Runs in whatever Python has `setfit` (1.2.0 runs beside transformers 5 and sentence-transformers 6; few_labels.py
passes `--setfit-python` when it lives in a virtual environment of its own). The library's defaults: contrastive
pairs by oversampling, batch 16, one epoch of the body at 2e-5, then scikit-learn's logistic regression head;
the encoder is the packaged MiniLM (a sentence-transformers model, so SetFit loads it as it ships).
Prints one JSON line: accuracy, macro-F1, training and prediction seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", required=True, help="CSV with columns text,label")
    parser.add_argument("--test", required=True, help="CSV with columns text,label")
    parser.add_argument("--model", required=True, help="a sentence-transformers model directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=-1, help="cap on contrastive steps (-1: SetFit's default)")
    args = parser.parse_args(argv)

    import pandas as pd
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.metrics import accuracy_score, f1_score

    train = pd.read_csv(args.train, dtype={"label": str}, keep_default_na=False)
    test = pd.read_csv(args.test, dtype={"label": str}, keep_default_na=False)
    start = time.perf_counter()
    model = SetFitModel.from_pretrained(args.model)
    scratch = tempfile.mkdtemp(prefix="setfit-")  # SetFit's Trainer writes checkpoints/ into the cwd by default
    trainer = Trainer(model=model, args=TrainingArguments(seed=args.seed, max_steps=args.max_steps, output_dir=scratch,
                                                          save_strategy="no"),
                      train_dataset=Dataset.from_dict({"text": train["text"].tolist(), "label": train["label"].tolist()}))
    trainer.train()
    trained = time.perf_counter()
    shutil.rmtree(scratch, ignore_errors=True)
    predicted = [str(p) for p in model.predict(test["text"].tolist(), batch_size=64, as_numpy=True)]
    done = time.perf_counter()
    result = {"accuracy": float(accuracy_score(test["label"], predicted)),
              "macro_f1": float(f1_score(test["label"], predicted, average="macro")),
              "train_seconds": trained - start, "predict_seconds": done - trained}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
