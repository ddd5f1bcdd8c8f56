"""Which given labels are probably wrong: confident learning (cleanlab) on out-of-fold probabilities.

cleanlab is the maintained implementation of confident learning (Northcutt et al., 2021), with a multi-label
API; medclf wraps it for its two tasks and names every output by label. It is an optional extra:
`pip install "medclf[audit]"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from medclf.core.figures import Label, class_names
from medclf.errors import MedclfError

SCORE_METHOD = "self_confidence"
"""cleanlab's label quality score: the out-of-fold probability of the given label (multi-label: per label, then
aggregated by cleanlab's exponential moving average over the labels, worst first). Low = probably wrong."""
FILTER_BY = "prune_by_noise_rate"
"""cleanlab's default rule for which rows count as issues: per class, as many as the estimated noise rate says,
those with the largest margin against the given label."""
INSTALL_HINT = 'medclf audit needs cleanlab: pip install "medclf[audit]" (or pip install cleanlab).'


def require_cleanlab() -> ModuleType:
    """The cleanlab module, or a one-sentence error that says how to install it."""
    try:
        import cleanlab
    except ImportError:
        raise MedclfError(INSTALL_HINT) from None
    return cleanlab


@dataclass
class LabelQuality:
    quality: np.ndarray
    """Label quality score per row in [0, 1] (low: probably mislabelled)."""
    issues: np.ndarray
    """Rows flagged as label issues, worst first (lowest quality)."""
    suggested: list[Label]
    """Per row, the label the out-of-fold model gives: a class, or (multi-label) a tuple of labels."""
    per_class: list[dict[str, Any]]
    """Per class: rows given it, flagged rows given it, and the estimated share of its given labels that are wrong."""


def label_quality(probs: np.ndarray, given: list[Label], labels: list[str], *, multi_label: bool = False) -> LabelQuality:
    """Confident learning on out-of-fold probabilities `probs` (rows x labels) and the given labels (a class per row;
    multi-label: a tuple of labels per row, possibly empty)."""
    require_cleanlab()
    probs = np.asarray(probs, dtype=float)
    index = {lab: i for i, lab in enumerate(labels)}
    if multi_label:
        return _multi_label(probs, [[index[lab] for lab in row] for row in given], labels)
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = probs / probs.sum(axis=1, keepdims=True)  # stored to 6 decimals: rows sum to 1 within 1e-5; cleanlab checks
    y = np.array([index[lab] for lab in class_names(given)])
    if len(set(y.tolist())) < len(labels):
        raise MedclfError("Every class needs at least one row to audit the labels; add rows or drop the empty class.")
    quality = get_label_quality_scores(y, probs, method=SCORE_METHOD)
    issues = find_label_issues(y, probs, filter_by=FILTER_BY, return_indices_ranked_by=SCORE_METHOD)
    joint = estimate_joint(y, probs)  # rows: given label, columns: estimated true label
    per_class = []
    for i, lab in enumerate(labels):
        flagged = int(np.isin(issues, np.flatnonzero(y == i)).sum())
        share = float(1.0 - joint[i, i] / joint[i].sum()) if joint[i].sum() > 0 else 0.0
        per_class.append({"label": lab, "rows": int((y == i).sum()), "flagged": flagged, "estimated_noise_rate": share})
    suggested: list[Label] = [labels[i] for i in probs.argmax(axis=1)]
    return LabelQuality(quality=np.asarray(quality), issues=np.asarray(issues, dtype=int), suggested=suggested,
                        per_class=per_class)


def _multi_label(probs: np.ndarray, y: list[list[int]], labels: list[str]) -> LabelQuality:
    from cleanlab.multilabel_classification import get_label_quality_scores
    from cleanlab.multilabel_classification.dataset import common_multilabel_issues
    from cleanlab.multilabel_classification.filter import find_label_issues

    quality = get_label_quality_scores(y, probs, method=SCORE_METHOD)
    issues = find_label_issues(y, probs, filter_by=FILTER_BY, return_indices_ranked_by=SCORE_METHOD)
    table = common_multilabel_issues(y, probs, class_names=labels)
    per_class = []
    for i, lab in enumerate(labels):
        present = np.array([i in row for row in y])
        rows = table[table["Class Index"] == i]
        # cleanlab's 'Issue Probability': the share of all rows whose given 0/1 for this label is estimated wrong
        share = float(rows["Issue Probability"].sum())
        per_class.append({"label": lab, "rows": int(present.sum()), "flagged": int(sum(i in y[r] for r in issues)),
                          "estimated_noise_rate": share})
    suggested: list[Label] = [tuple(lab for lab, p in zip(labels, row) if p >= 0.5) for row in probs]
    return LabelQuality(quality=np.asarray(quality), issues=np.asarray(issues, dtype=int), suggested=suggested,
                        per_class=per_class)
