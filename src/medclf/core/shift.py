"""Shift without labels: how the class shares of new texts moved (prevalence, or label, shift), whether the texts
themselves moved (covariate shift in the encoder's space), and Bayes' correction of calibrated probabilities to new
shares.

Prevalence: the EM prior adjustment of Saerens, Latinne & Decaestecker, "Adjusting the outputs of a classifier to
new a priori probabilities: a simple procedure", Neural Computation 14(1), 2002. With calibrated posteriors p(k|x)
learnt under training shares s, the new shares q are the fixed point of q_k = mean_x p_q(k|x), where
p_q(k|x) = p(k|x) q_k/s_k / sum_j p(j|x) q_j/s_j (Bayes' rule with the priors swapped); EM reaches it from q = s.
It assumes label shift (p(x|y) unchanged) and calibrated probabilities. A multi-label run gets one two-class
problem per label (present, absent). Intervals: a percentile bootstrap over the new texts (EM again on each
resample, warm-started at the estimate).

Whether the model's outputs moved is tested without that assumption: a permutation test between the reference's
probabilities and the new ones (the statistic: the squared difference of their mean probability vectors, each
class weighted by 1 / its pooled mean, or 1 / (m (1 - m)) per label for a multi-label run; the black-box shift
detection of Lipton, Wang & Smola, ICML 2018, and Rabanser, Guennemann & Lipton, NeurIPS 2019). It reacts to a
change of class shares, and to any covariate shift that moves the outputs too. Its level is exact when the
reference and the new texts are exchangeable; the reference is the run's validation part, which chose the kept
weights and the temperature, so the model may look a little surer there than on fresh texts of the same source
(measured: benchmarks/results/2026-12-06-drift/). Saerens et al.'s own
likelihood-ratio test is not used: it takes the calibrated probabilities as exact, and on the medical abstracts
(temperature-scaled, accuracy 0.63) it fell below 0.05 on 13 of 20 draws without any shift
(benchmarks/results/2026-12-06-drift/).

Covariate: the maximum mean discrepancy (Gretton, Borgwardt, Rasch, Schoelkopf & Smola, "A kernel two-sample test",
JMLR 13, 2012) between the reference embeddings and the new ones, Gaussian kernel with the median pairwise distance
as its width, p-value by permutation (the share of label permutations whose MMD is at least the observed one,
counting the observed: exact at any size). The witness function (the mean kernel to the new texts minus that to the
reference) scores each new text by how unlike the reference it looks; its mean over a slice of the new data names
the slice that moved most.

Written here rather than taken from alibi-detect, Evidently or NannyML: alibi-detect's MMD detector pulls a
TensorFlow or PyTorch backend and its own preprocessing around the same statistic, and the monitoring tools work on
tabular features; here both samples are already the run's embeddings and probabilities, and each test is a few
hundred weighted sums in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EM_TOL = 1e-8
EM_MAX_ITER = 1000
PERMUTATIONS = 1000
MAX_TEST_ROWS = 2000
"""Rows of each sample the two tests read (a seeded subsample beyond): the kernel matrix of 4,000 rows and its
distances take about 400 MB at the peak."""


def em_shares(probs: np.ndarray, train: np.ndarray, *, start: np.ndarray | None = None) -> np.ndarray:
    """The class shares of the texts behind `probs` (n x K calibrated posteriors learnt under shares `train`), by
    Saerens et al.'s EM; `start`: where to begin (default the training shares)."""
    train = np.clip(np.asarray(train, dtype=float), 1e-12, None)
    q = train.copy() if start is None else np.clip(np.asarray(start, dtype=float), 1e-12, None)
    for _ in range(EM_MAX_ITER):
        weighted = probs * (q / train)
        posterior = weighted / np.clip(weighted.sum(axis=1, keepdims=True), 1e-300, None)
        new = posterior.mean(axis=0)
        if np.abs(new - q).max() < EM_TOL:
            return new
        q = new
    return q


def reweight(probs: np.ndarray, train: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Bayes' correction: posteriors learnt under shares `train` moved to shares `new` (rows still sum to 1)."""
    weighted = probs * (np.asarray(new, dtype=float) / np.clip(np.asarray(train, dtype=float), 1e-12, None))
    return weighted / np.clip(weighted.sum(axis=1, keepdims=True), 1e-300, None)


@dataclass(frozen=True)
class SharesEstimate:
    """One K-class problem's estimated shares with their bootstrap interval."""

    shares: np.ndarray
    low: np.ndarray
    high: np.ndarray


def estimate_shares(probs: np.ndarray, train: np.ndarray, *, resamples: int = 200, seed: int = 0,
                    level: float = 0.95) -> SharesEstimate:
    """EM shares of one K-class problem and their percentile-bootstrap interval over the texts."""
    shares = em_shares(probs, train)
    rng = np.random.default_rng(seed)
    n = len(probs)
    draws = np.array([em_shares(probs[rng.integers(0, n, n)], train, start=shares) for _ in range(resamples)]) \
        if n else np.empty((0, len(train)))
    tail = (1 - level) / 2
    low = np.quantile(draws, tail, axis=0) if len(draws) else shares
    high = np.quantile(draws, 1 - tail, axis=0) if len(draws) else shares
    return SharesEstimate(shares=shares, low=low, high=high)


def prevalence_test(reference: np.ndarray, new: np.ndarray, *, binary: bool, permutations: int = PERMUTATIONS,
                    seed: int = 0, max_rows: int = MAX_TEST_ROWS) -> tuple[float, float]:
    """(statistic, permutation p-value) of 'the new texts' probabilities are drawn as the reference's': the weighted
    squared difference of the two mean probability vectors (this module's docstring); binary: each column is a
    label of its own (multi-label), weighted by 1 / (m (1 - m)), else by 1 / m."""
    rng = np.random.default_rng(seed)
    reference = reference[_subsample(len(reference), max_rows, rng)]
    new = new[_subsample(len(new), max_rows, rng)]
    pooled = np.concatenate([reference, new]).astype(np.float64)
    m = np.clip(pooled.mean(axis=0), 1e-6, 1 - 1e-6)
    weight = 1.0 / (m * (1.0 - m)) if binary else 1.0 / m
    a, b = len(reference), len(new)
    signs = np.concatenate([np.full(a, 1.0 / a), np.full(b, -1.0 / b)])

    def statistics(w: np.ndarray) -> np.ndarray:  # w: rows x P weightings, one column per labelling
        return ((w.T @ pooled) ** 2 * weight).sum(axis=1)

    observed = float(statistics(signs[:, None])[0])
    exceed, done = 0, 0
    while done < permutations:
        block = min(100, permutations - done)
        exceed += int((statistics(np.stack([rng.permutation(signs) for _ in range(block)], axis=1))
                       >= observed - 1e-15).sum())
        done += block
    return observed, (exceed + 1) / (permutations + 1)


def as_binary(p: np.ndarray) -> np.ndarray:
    """One label's probabilities as a two-class problem: columns (absent, present)."""
    return np.stack([1.0 - p, p], axis=1)


# ---------------------------------------------------------------- covariate shift in the encoder's space


@dataclass(frozen=True)
class MMDTest:
    statistic: float
    """The (biased, V-statistic) squared MMD between the two samples."""
    p_value: float
    permutations: int
    bandwidth: float
    n_reference: int
    n_new: int
    witness: np.ndarray
    """Per new text read by the test: mean kernel to the new texts minus mean kernel to the reference (high: unlike
    the reference)."""
    rows: np.ndarray
    """Which new texts the test read (all, or a seeded subsample of MAX_TEST_ROWS)."""


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, limit, replace=False))


def mmd_test(reference: np.ndarray, new: np.ndarray, *, permutations: int = PERMUTATIONS, seed: int = 0,
             max_rows: int = MAX_TEST_ROWS) -> MMDTest:
    """The kernel two-sample test of this module's docstring between two sets of embeddings (rows)."""
    rng = np.random.default_rng(seed)
    ref_rows, new_rows = _subsample(len(reference), max_rows, rng), _subsample(len(new), max_rows, rng)
    x = np.concatenate([reference[ref_rows], new[new_rows]]).astype(np.float64)
    m, n = len(ref_rows), len(new_rows)
    squared = np.sum(x * x, axis=1)
    distances = np.clip(squared[:, None] + squared[None, :] - 2.0 * x @ x.T, 0.0, None)
    upper = distances[np.triu_indices(len(x), k=1)]
    median = float(np.median(upper[upper > 0])) if (upper > 0).any() else 1.0
    kernel = np.exp(-distances / median)  # exp(-d^2 / h), h the median squared distance
    weights = np.concatenate([np.full(m, 1.0 / m), np.full(n, -1.0 / n)])

    def statistics(w: np.ndarray) -> np.ndarray:  # w: (m + n) x P sample weights, one column per labelling
        return np.einsum("ip,ip->p", w, kernel @ w)

    observed = float(statistics(weights[:, None])[0])
    exceed, done = 0, 0
    while done < permutations:  # in blocks, so memory stays (m + n) x 100 whatever the number of permutations
        block = min(100, permutations - done)
        shuffled = np.stack([rng.permutation(weights) for _ in range(block)], axis=1)
        exceed += int((statistics(shuffled) >= observed - 1e-12).sum())
        done += block
    witness = kernel[m:, m:].mean(axis=1) - kernel[m:, :m].mean(axis=1)
    return MMDTest(statistic=observed, p_value=(exceed + 1) / (permutations + 1), permutations=permutations,
                   bandwidth=float(np.sqrt(median)), n_reference=m, n_new=n, witness=witness, rows=new_rows)
