"""Which unlabelled texts to label next: uncertainty from a classifier's probabilities, and diversity among them.

Plain numpy on arrays (probabilities, embeddings), so the strategies are tested on hand-made numbers and the
annotation-loop benchmark runs them on cached features. Why by hand: the active-learning libraries (modAL,
small-text, baal) each wrap their own model and training loop around these few lines; medclf already has the
model, the calibrated probabilities and the encoder's embedding space, and needs only the ranking.

- margin: 1 - (top probability - second); multi-label: 1 - the smallest distance of a label's probability to its
  threshold, scaled to [0, 1] (the label the model is least sure of decides).
- entropy: the probabilities' entropy over log(number of classes); multi-label: the mean binary entropy over labels.
- diverse: uncertainty-weighted greedy k-center in the embedding space (cosine distance; the core-set rule with
  each text's distance weighted by its margin uncertainty): start from the most uncertain, then always the text
  whose uncertainty x distance to everything picked (and to the rows already labelled, when their embeddings are
  given) is largest. A cluster of near-duplicate uncertain notes gives one pick, not n; a far but certain text is
  not picked for being far.
- random: a seeded random order (the baseline every strategy should beat).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medclf.errors import MedclfError

STRATEGIES = ("margin", "entropy", "diverse", "random")


@dataclass
class Ranking:
    order: np.ndarray
    """Positions into the pool, best first (n of them, or the whole pool when it is smaller)."""
    uncertainty: np.ndarray
    """The strategy's uncertainty of each picked text, in `order`'s order (margin's for diverse and random)."""


def uncertainty(probs: np.ndarray, *, strategy: str = "margin", multi_label: bool = False,
                thresholds: np.ndarray | None = None) -> np.ndarray:
    """Each row's uncertainty in [0, 1] (1: the model cannot tell), by margin or entropy."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise MedclfError("Probabilities must be a table of rows x labels.")
    if strategy == "entropy":
        p = np.clip(probs, 1e-12, 1.0)
        if multi_label:
            q = np.clip(1.0 - probs, 1e-12, 1.0)
            return np.asarray((-(p * np.log(p) + q * np.log(q)) / np.log(2)).mean(axis=1))
        if probs.shape[1] == 1:
            return np.zeros(len(probs))
        return np.asarray(-(p * np.log(p)).sum(axis=1) / np.log(probs.shape[1]))
    if multi_label:
        t = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=float)
        # distance to the threshold as a share of the room on that side of it: 0 at the threshold, 1 at 0 or 1
        room = np.where(probs >= t, 1.0 - t, t)
        return np.asarray(1.0 - (np.abs(probs - t) / np.clip(room, 1e-12, None)).min(axis=1))
    if probs.shape[1] == 1:
        return np.zeros(len(probs))
    top2 = np.sort(probs, axis=1)[:, -2:]
    return np.asarray(1.0 - (top2[:, 1] - top2[:, 0]))


def rank(probs: np.ndarray, *, n: int, strategy: str = "margin", multi_label: bool = False,
         thresholds: np.ndarray | None = None, embeddings: np.ndarray | None = None,
         labelled: np.ndarray | None = None, seed: int = 0) -> Ranking:
    """The n texts of the pool to label next, by `strategy` (see the module's doc). `embeddings` (rows x dims, one
    per pool text) is needed by diverse; `labelled`: embeddings of rows already labelled, which diverse keeps away from."""
    if strategy not in STRATEGIES:
        raise MedclfError(f"Unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise MedclfError(f"--n must be a positive whole number, got {n!r}.")
    probs = np.asarray(probs, dtype=float)
    size = len(probs)
    n = min(int(n), size)
    by = "entropy" if strategy == "entropy" else "margin"
    u = uncertainty(probs, strategy=by, multi_label=multi_label, thresholds=thresholds)
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(size)[:n]
    elif strategy in ("margin", "entropy"):
        order = np.argsort(-u, kind="stable")[:n]
    else:
        if embeddings is None or len(embeddings) != size:
            raise MedclfError("The diverse strategy needs one embedding per pool text.")
        by_uncertainty = np.argsort(-u, kind="stable")  # ties between equal scores go to the more uncertain text
        fixed = None if labelled is None or len(labelled) == 0 else _unit(np.asarray(labelled, dtype=float))
        order = by_uncertainty[k_center(_unit(np.asarray(embeddings, dtype=float)[by_uncertainty]), n,
                                        weights=u[by_uncertainty], fixed=fixed)]
    return Ranking(order=np.asarray(order, dtype=int), uncertainty=u[order])


def k_center(points: np.ndarray, n: int, *, weights: np.ndarray | None = None,
             fixed: np.ndarray | None = None) -> np.ndarray:
    """Greedy k-center over unit vectors (cosine distance), each point's distance times its weight: the first point
    (points come most uncertain first) unless `fixed` centres exist, then always the point whose weighted distance to
    every centre so far is largest."""
    n = min(n, len(points))
    w = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=float)
    if fixed is None:
        chosen = [0]
        nearest = 1.0 - points @ points[0]
    else:
        nearest = (1.0 - points @ fixed.T).min(axis=1)
        chosen = [int(np.argmax(w * nearest))]
        nearest = np.minimum(nearest, 1.0 - points @ points[chosen[0]])
    while len(chosen) < n:
        score = w * np.clip(nearest, 0.0, None)
        score[chosen] = -np.inf
        pick = int(np.argmax(score))  # ties: the earlier, more uncertain point
        chosen.append(pick)
        nearest = np.minimum(nearest, 1.0 - points @ points[pick])
    return np.array(chosen, dtype=int)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
