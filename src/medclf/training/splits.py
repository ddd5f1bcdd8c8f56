"""Reading the training table and cutting it into train, validation and test parts: stratified (by class, or
iteratively by label set for multi-label data), grouped (no patient on both sides), and the k folds of
cross-validation; clear errors when a class is too small for the cut asked for."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from medclf.config import TrainConfig
from medclf.core.figures import Label, class_names, label_sets
from medclf.core.labels import LabeledData, check_classes, check_label_sets, load_labeled
from medclf.errors import MedclfError


@dataclass
class Splits:
    train: LabeledData
    val: LabeledData
    test: LabeledData
    labels: list[str]
    how: str
    calibration: LabeledData | None = None
    """Rows held out from training and selection, on which conformal label sets are calibrated (None: none)."""


def read_training_data(config: TrainConfig) -> tuple[LabeledData, list[str]]:
    """The training table, read and validated, and its label names."""
    columns = _columns(config)
    if config.test_data is not None:  # subgroups are reported on the test part: the slice columns are its to have
        columns["slice_columns"] = None
    data = load_labeled(config.data, role="training data", **columns)
    if config.multi_label:
        declared = data.label_column if isinstance(data.label_column, list) else None
        labels = check_label_sets(label_sets(data.labels), source=data.source, declared=declared,
                                  sep=None if declared else config.label_sep)
    else:
        labels = check_classes(class_names(data.labels), source=data.source)
    return data, labels


class _Columns(TypedDict):
    text_columns: list[str] | None
    label_column: str | list[str] | None
    drop_empty: bool
    multi_label: bool
    label_sep: str
    group_column: str | None
    slice_columns: list[str] | None


def _columns(config: TrainConfig) -> _Columns:
    return {"text_columns": config.text_columns, "label_column": config.label_column, "drop_empty": config.drop_empty,
            "multi_label": config.multi_label, "label_sep": config.label_sep, "group_column": config.group_column,
            "slice_columns": config.slice_columns}


def split_off(pool: LabeledData, *, fraction: float, seed: int, part: str, option: str) -> tuple[LabeledData, LabeledData]:
    """(rest of pool, a stratified slice of it): by groups too where the data has them."""
    keep, out = stratified_split(pool.labels, fraction=fraction, seed=seed, source=pool.source, part=part,
                                 option=option, groups=pool.groups)
    return pool.subset(keep), pool.subset(out)


def check_training_labels(train: LabeledData, labels: list[str]) -> None:
    missing = sorted(set(labels) - set(_label_names(train.labels)))
    if missing:
        raise MedclfError(f"Class(es) {', '.join(map(repr, missing))} have no training rows after splitting; add rows.")


def prepare_splits(config: TrainConfig) -> Splits:
    """Read and validate the data, then split it: stratified test and validation parts unless given."""
    data, labels = read_training_data(config)
    columns = _columns(config)  # the other parts are read with the columns the training table resolved to
    columns["text_columns"], columns["label_column"], columns["group_column"] = data.text_columns, data.label_column, None
    unsliced: _Columns = {**columns, "slice_columns": None}  # subgroups are reported on the test part only
    how = []
    grouped = f", grouped by {config.group_column}" if config.group_column else ""

    def part(path: str | None, pool: LabeledData, fraction: float, name: str) -> tuple[LabeledData, LabeledData]:
        """(rest of pool, the named part): read from `path`, or a stratified slice of `pool`."""
        if path is not None:
            held = load_labeled(path, role=f"{name} data", **(columns if name == "test" else unsliced))
            _check_known(held, labels, name)
            how.append(f"{name} from {path}")
            return pool, held
        option = "--test-data" if name == "test" else "--val-data"
        how.append(f"stratified {fraction:.0%} {name} part{grouped}" + (f", seed {config.seed}" if name == "test" else ""))
        return split_off(pool, fraction=fraction, seed=config.seed, part=name, option=option)

    train, test = part(config.test_data, data, config.test_size, "test")
    calibration = None
    share = config.calibration_share()
    if share:
        train, calibration = split_off(train, fraction=share, seed=config.seed, part="calibration",
                                       option="a smaller --calibration-size")
        how.append(f"stratified {share:.0%} calibration part{grouped}")
    train, val = part(config.val_data, train, config.val_size, "validation")
    check_training_labels(train, labels)
    return Splits(train=train, val=val, test=test, labels=labels, how="; ".join(how), calibration=calibration)


def _label_names(values: Sequence[Label]) -> set[str]:
    """Every label that occurs in a part (label tuples too)."""
    if values and isinstance(values[0], tuple):
        return {lab for present in label_sets(values) for lab in present}
    return set(class_names(values))


def _check_known(part: LabeledData, labels: list[str], name: str) -> None:
    unseen = sorted(_label_names(part.labels) - set(labels))
    if unseen:
        shown = ", ".join(repr(u) for u in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        raise MedclfError(
            f"The {name} data has {len(unseen)} label(s) never seen in training ({shown}); "
            "fix the label column or add those classes to the training data."
        )


def stratified_split(
    labels: Sequence[Label], *, fraction: float, seed: int, source: str, part: str, option: str,
    groups: list[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Indices (keep, held_out) of a stratified split; clear errors when a class is too small.
    Label tuples (multi-label) are split by iterative stratification; with `groups`, no group lands on
    both sides (the held-out part is one fold of about `fraction` of the groups)."""
    from sklearn.model_selection import train_test_split

    if groups is not None:
        n_splits = max(2, min(round(1 / fraction), len(set(groups))))
        folds = kfold_indices(labels, folds=n_splits, seed=seed, groups=groups, source=source)
        keep, held = folds[0]
        return keep, held
    if labels and isinstance(labels[0], tuple):
        return _multilabel_split(label_sets(labels), fraction=fraction, seed=seed, source=source, part=part, option=option)
    counts = Counter(labels)
    smallest, n_smallest = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
    if n_smallest < 2:
        raise MedclfError(
            f"Class {smallest!r} has only {n_smallest} row(s) in {source}, too few to stratify the {part} split "
            f"(need at least 2 per class); add rows, remove that class, or pass {option}."
        )
    # ceil(fraction * n) as scikit-learn does, but at least one row per class in each part.
    n_held = max(int(-(-fraction * len(labels) // 1)), len(counts))
    if len(labels) - n_held < len(counts):
        raise MedclfError(
            f"{source} has {len(labels)} rows for {len(counts)} classes, too few for a stratified "
            f"{fraction:.0%} {part} split; add rows or pass {option}."
        )
    indices = list(range(len(labels)))
    try:
        keep, held = train_test_split(indices, test_size=n_held, random_state=seed, stratify=labels)
    except ValueError:
        raise MedclfError(
            f"Class {smallest!r} ({n_smallest} rows) is too small to stratify the {part} split of {source}; "
            f"add rows or pass {option}."
        ) from None
    return list(keep), list(held)


def _multilabel_split(
    labels: list[tuple[str, ...]], *, fraction: float, seed: int, source: str, part: str, option: str
) -> tuple[list[int], list[int]]:
    """Iterative stratification (Sechidis et al. 2011; Szymanski & Kajdanowicz 2017): every label keeps about
    its share of rows in both parts, rare labels first, where a plain random split can leave one side without them."""
    import numpy as np
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    names = sorted({lab for present in labels for lab in present})
    n_held = int(-(-fraction * len(labels) // 1))
    if n_held < 1 or len(labels) - n_held < 2:
        raise MedclfError(f"{source} has {len(labels)} rows, too few for a {fraction:.0%} {part} split; add rows or "
                          f"pass {option}.")
    index = {lab: j for j, lab in enumerate(names)}
    y = np.zeros((len(labels), len(names)), dtype=int)
    for row, present in enumerate(labels):
        y[row, [index[lab] for lab in present]] = 1
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_held, random_state=seed)
    keep, held = next(splitter.split(np.zeros(len(labels)), y))
    return sorted(int(i) for i in keep), sorted(int(i) for i in held)


def kfold_indices(
    labels: Sequence[Label], *, folds: int, seed: int, groups: list[str] | None = None, source: str = "the data",
) -> list[tuple[list[int], list[int]]]:
    """(rest, held-out fold) index pairs of a k-fold split: stratified by class (StratifiedKFold), by label
    (multi-label: iterative stratification), and with `groups` never splitting a group (StratifiedGroupKFold;
    multi-label: GroupKFold). Shuffled with the seed."""
    import warnings

    import numpy as np
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold

    n = len(labels)
    if not isinstance(folds, int) or folds < 2:
        raise MedclfError(f"--folds must be a whole number of at least 2, got {folds!r}.")
    if folds > n:
        raise MedclfError(f"{source} has {n} rows, fewer than {folds} folds; pass a smaller --folds.")
    multi = bool(labels) and isinstance(labels[0], tuple)
    if groups is not None:
        n_groups = len(set(groups))
        if n_groups < folds:
            raise MedclfError(f"{source} has {n_groups} groups, fewer than {folds} folds; pass a smaller --folds "
                              "(or split by another group column).")
    if multi:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        names = sorted({lab for present in labels for lab in present})
        y = np.array([[lab in present for lab in names] for present in labels], dtype=int)
        splitter = (GroupKFold(n_splits=folds) if groups is not None
                    else MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    else:
        counts = Counter(labels)
        smallest, n_smallest = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
        if n_smallest < folds and groups is None:
            raise MedclfError(f"Class {smallest!r} has only {n_smallest} row(s) in {source}, fewer than {folds} folds; "
                              "add rows, remove that class, or pass a smaller --folds.")
        y = np.asarray(labels)
        splitter = (StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed) if groups is not None
                    else StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has fewer members than n_splits"
        pairs = list(splitter.split(np.zeros(n), y, groups))
    return [(sorted(int(i) for i in rest), sorted(int(i) for i in held)) for rest, held in pairs]
