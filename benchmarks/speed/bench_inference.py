"""Inference throughput on the test texts, one system per process (for side-by-side benchmarks).

python benchmarks/speed/bench_inference.py --system medclf|pipeline|tutorial --run RUN_DIR --test SPLIT/test.csv \
    [--result bench-out/infer-medclf.json] [--check-unbatched] [--device auto|cpu|cuda] [--dtype auto|fp32|bf16]
    [--repeat N] [--agreement] [--backend torch|onnx|onnx-int8] [--predictions F.csv]

All three use the same fine-tuned weights (RUN_DIR/model) in plain PyTorch fp32 on the default
threads, after a warm-up on 8 texts; the clock covers tokenization and the forward passes.
- medclf: `TextClassifier.predict` (its default batch of 16, batches sorted by length, padded per batch,
  inference_mode).
- pipeline: `transformers.pipeline("text-classification")` at batch 32, truncation at the run's max length.
- tutorial: every text padded to 512, batches of 16 in input order, `torch.no_grad()`.
On a GPU (--device auto finds it): medclf batches by its device plan (a token budget) and `--dtype auto` is its
default precision there (bf16 autocast); the pipeline gets `device=0` and `dtype` (bf16 or fp32). --repeat N times
the test texts N times (a stable clock on a fast card); --agreement (medclf) also runs fp32 and reports the share
of identical top labels.
--check-unbatched (medclf only) also predicts every text on its own and reports whether the
labels are identical and the largest probability difference.
--backend (medclf): onnx or onnx-int8 time the run's exported ONNX models (`medclf export` first) in ONNX Runtime.
--predictions writes the predicted labels (and medclf's probabilities) as CSV, no text, for agreement between
processes (compare.py --speed compares every system with TextClassifier fp32 through it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import (  # noqa: E402
    agreement,
    peak_rss_gib,
    predictions_frame,
    read_split,
    scores,
    write_predictions,
    write_result,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", required=True, choices=["medclf", "pipeline", "tutorial"])
    parser.add_argument("--run", required=True, help="a medclf run directory")
    parser.add_argument("--test", required=True)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: medclf's own (16), 32 for the pipeline, 16 for the tutorial")
    parser.add_argument("--check-unbatched", action="store_true")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                        help="medclf: its --precision; pipeline: auto = fp32")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--agreement", action="store_true", help="medclf: top-label agreement with fp32")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"], help="medclf only")
    parser.add_argument("--predictions", default=None, help="also write the predicted labels (and probabilities) here")
    parser.add_argument("--result", default="bench-out/inference.json")
    args = parser.parse_args(argv)

    import numpy as np

    texts, gold = read_split(args.test)
    texts, gold = texts * args.repeat, gold * args.repeat
    import torch

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    model_dir = str(Path(args.run) / "model")
    result: dict = {"system": f"{args.system}-inference", "n": len(texts)}
    if args.system == "medclf":
        from medclf.config import LoadOptions
        from medclf.inference.classifier import TextClassifier

        options = LoadOptions(backend=args.backend, device="cuda" if cuda else "cpu", batch_size=args.batch_size,
                              precision="auto" if args.backend != "torch" else args.dtype)
        clf = TextClassifier.load(args.run, options)
        batch = clf.batch_size or "device plan"
        clf.predict(texts[:256])  # warm-up: kernels for the first shapes, allocator
        _sync(cuda)
        start = time.perf_counter()
        probs = clf.predict_proba(texts)
        _sync(cuda)
        seconds = time.perf_counter() - start
        result["precision"] = {"onnx": "fp32 ONNX", "onnx-int8": "int8 ONNX"}.get(args.backend, clf.precision.name)
        result["backend"] = clf.backend
        predicted = [clf.labels[i] for i in probs.argmax(axis=1)]
        if args.agreement:
            reference = TextClassifier.load(args.run, options.replace(backend="torch", precision="fp32"))
            fp32 = reference.predict_proba(texts)
            close = agreement(predictions_frame([clf.labels[i] for i in fp32.argmax(axis=1)], fp32, clf.labels),
                              predictions_frame(predicted, probs, clf.labels))
            result["top_label_agreement_with_fp32"] = close["top_label_agreement"]
            result["max_prob_diff_fp32"] = close["max_prob_diff"]
        if args.check_unbatched:
            single = np.stack([clf.predict_proba(text) for text in texts])
            result["identical_to_unbatched"] = bool((single.argmax(axis=1) == probs.argmax(axis=1)).all())
            result["max_prob_diff_unbatched"] = float(np.abs(single - probs).max())
    elif args.system == "pipeline":
        from transformers import pipeline

        batch = args.batch_size or 32
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        pipe = pipeline("text-classification", model=model_dir, device=0 if cuda else "cpu", dtype=dtype)
        result["precision"] = "bf16" if args.dtype == "bf16" else "fp32"
        max_length = json.loads((Path(args.run) / "train_config.json").read_text())["config"]["max_length"]
        kwargs = {"batch_size": batch, "truncation": True, "max_length": max_length}  # as the run was trained
        pipe(texts[:256], **kwargs)
        _sync(cuda)
        start = time.perf_counter()
        out = pipe(texts, **kwargs)
        _sync(cuda)
        seconds = time.perf_counter() - start
        predicted = [row["label"] for row in out]
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        batch = args.batch_size or 16
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        pad_to = min(512, model.config.max_position_embeddings)

        from accuracy.reference_tutorial import padded_predict  # the benchmarks folder is on sys.path

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
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "device": "cuda" if cuda else "cpu",
    })
    if args.predictions:
        write_predictions(args.predictions, [str(p) for p in predicted], *((probs, clf.labels) if args.system == "medclf" else ()))
    write_result(args.result, result)


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
