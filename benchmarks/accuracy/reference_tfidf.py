"""TF-IDF + logistic regression on the same split: the baseline any classifier has to beat.

python benchmarks/accuracy/reference_tfidf.py --train SPLIT/train.csv --test SPLIT/test.csv [--result bench-out/tfidf.json]

Word 1-2-grams (min_df 2, sublinear tf), multinomial logistic regression (C=10, lbfgs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import peak_rss_gib, read_split, scores, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--result", default="bench-out/tfidf.json")
    args = parser.parse_args(argv)

    from medclf.core.baseline import tfidf_pipeline

    train_texts, train_labels = read_split(args.train)
    test_texts, test_labels = read_split(args.test)
    model = tfidf_pipeline()  # the same baseline every run's report shows
    start = time.perf_counter()
    model.fit(train_texts, train_labels)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    predicted = list(model.predict(test_texts))
    infer = time.perf_counter() - start
    write_result(args.result, {
        "system": "tfidf-lr",
        **scores(test_labels, predicted),
        "train_loop_seconds": seconds,
        "train_samples_per_second": len(train_texts) / seconds,
        "inference_samples_per_second": len(test_texts) / infer,
        "peak_rss_gib": peak_rss_gib(),
        "n_train": len(train_texts),
        "n_test": len(test_texts),
    })


if __name__ == "__main__":
    main()
