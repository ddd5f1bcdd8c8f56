"""Inference throughput on the test texts, one system per process (for side-by-side benchmarks).

python benchmarks/bench_inference.py --system medclf|pipeline|tutorial --run RUN_DIR --test SPLIT/test.csv \
    [--result bench-out/infer-medclf.json] [--check-unbatched]

All three use the same fine-tuned weights (RUN_DIR/model) in plain PyTorch fp32 on the default
threads, after a warm-up on 8 texts; the clock covers tokenization and the forward passes.
- medclf: `TextClassifier.predict` (its default batch of 16, batches sorted by length, padded per batch,
  inference_mode).
- pipeline: `transformers.pipeline("text-classification")` at batch 32, truncation at the run's max length.
- tutorial: every text padded to 512, batches of 16 in input order, `torch.no_grad()`.
--check-unbatched (medclf only) also predicts every text on its own and reports whether the
labels are identical and the largest probability difference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_common import peak_rss_gib, read_split, scores, write_result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", required=True, choices=["medclf", "pipeline", "tutorial"])
    parser.add_argument("--run", required=True, help="a medclf run directory")
    parser.add_argument("--test", required=True)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: medclf's own (16), 32 for the pipeline, 16 for the tutorial")
    parser.add_argument("--check-unbatched", action="store_true")
    parser.add_argument("--result", default="bench-out/inference.json")
    args = parser.parse_args(argv)

    import numpy as np

    texts, gold = read_split(args.test)
    model_dir = str(Path(args.run) / "model")
    result: dict = {"system": f"{args.system}-inference", "n": len(texts)}
    if args.system == "medclf":
        from medclf.inference.classifier import TextClassifier

        clf = TextClassifier.load(args.run, **({"batch_size": args.batch_size} if args.batch_size else {}))
        batch = clf.batch_size
        clf.predict(texts[:8])
        start = time.perf_counter()
        probs = clf.predict_proba(texts)
        seconds = time.perf_counter() - start
        predicted = [clf.labels[i] for i in probs.argmax(axis=1)]
        if args.check_unbatched:
            single = np.stack([clf.predict_proba(text) for text in texts])
            result["identical_to_unbatched"] = bool((single.argmax(axis=1) == probs.argmax(axis=1)).all())
            result["max_prob_diff_unbatched"] = float(np.abs(single - probs).max())
    elif args.system == "pipeline":
        from transformers import pipeline

        batch = args.batch_size or 32
        pipe = pipeline("text-classification", model=model_dir, device="cpu")
        max_length = json.loads((Path(args.run) / "train_config.json").read_text())["config"]["max_length"]
        kwargs = {"batch_size": batch, "truncation": True, "max_length": max_length}  # as the run was trained
        pipe(texts[:8], **kwargs)
        start = time.perf_counter()
        out = pipe(texts, **kwargs)
        seconds = time.perf_counter() - start
        predicted = [row["label"] for row in out]
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        batch = args.batch_size or 16
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        pad_to = min(512, model.config.max_position_embeddings)

        from reference_tutorial import padded_predict

        padded_predict(model, tokenizer, texts[:8], labels, pad_to=pad_to, batch_size=batch)
        start = time.perf_counter()
        predicted = padded_predict(model, tokenizer, texts, labels, pad_to=pad_to, batch_size=batch)
        seconds = time.perf_counter() - start
    result.update({
        "batch_size": batch,
        **scores(gold, [str(p) for p in predicted]),
        "inference_seconds": seconds,
        "inference_samples_per_second": len(texts) / seconds,
        "peak_rss_gib": peak_rss_gib(),
    })
    write_result(args.result, result)


if __name__ == "__main__":
    main()
