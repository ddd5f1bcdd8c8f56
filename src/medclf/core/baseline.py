"""TF-IDF + logistic regression on the same split: the reference every run's report shows beside the model.

Word 1-2-grams (min_df 2, sublinear tf) and logistic regression (C=10): multinomial for single-label
runs, one per label (one-vs-rest) for multi-label runs. Seconds on a CPU; a fine-tuned encoder that
does not beat it is not worth its cost.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np


def tfidf_pipeline(*, multi_label: bool = False) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    head = LogisticRegression(C=10.0, max_iter=3000)
    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                         OneVsRestClassifier(head) if multi_label else head)


def tfidf_probabilities(train_texts: list[str], y_train: np.ndarray, test_texts: list[str], n_labels: int,
                        *, multi_label: bool) -> np.ndarray | None:
    """Test probabilities (n_test x n_labels) of the baseline fitted on the training part; None when the
    training texts give it nothing to fit (no word in two texts, or a label without both classes)."""
    pipeline = tfidf_pipeline(multi_label=multi_label)
    try:
        pipeline.fit(train_texts, y_train)
    except ValueError:
        return None
    probs = pipeline.predict_proba(test_texts)
    if not multi_label:  # columns follow the class ids seen in training
        full = np.zeros((len(test_texts), n_labels))
        full[:, pipeline.classes_.astype(int)] = probs
        probs = full
    return probs


def start_tfidf(train_texts: list[str], y_train: np.ndarray, test_texts: list[str], n_labels: int, *,
                multi_label: bool, background: bool) -> Callable[[], np.ndarray | None]:
    """Start the baseline; the returned function gives its probabilities (`tfidf_probabilities`), waiting for them.

    background: fit it in a separate process meanwhile (a fresh interpreter: no GIL shared with the training loop,
    no CUDA state inherited). Worth it where the CPU is otherwise idle while a GPU trains; on a CPU that trains, the
    two would only compete for the same cores, so it runs when asked for instead."""
    args = (train_texts, y_train, test_texts, n_labels)
    if not background:
        return functools.partial(tfidf_probabilities, *args, multi_label=multi_label)
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    future = pool.submit(tfidf_probabilities, *args, multi_label=multi_label)

    def result() -> np.ndarray | None:
        try:
            return future.result()
        finally:
            pool.shutdown()

    return result
