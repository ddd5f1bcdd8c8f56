"""Reading the training table and cutting it into train, validation and test parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medclf.config import TrainConfig
from medclf.core.data import LabeledData, check_classes, check_label_sets, load_labeled, stratified_split
from medclf.errors import MedclfError


@dataclass
class Splits:
    train: LabeledData
    val: LabeledData
    test: LabeledData
    labels: list[str]
    how: str


def read_training_data(config: TrainConfig) -> tuple[LabeledData, list[str]]:
    """The training table, read and validated, and its label names."""
    data = load_labeled(config.data, role="training data", **_columns(config))
    if config.multi_label:
        declared = data.label_column if isinstance(data.label_column, list) else None
        labels = check_label_sets(data.labels, source=data.source, declared=declared,
                                  sep=None if declared else config.label_sep)
    else:
        labels = check_classes(data.labels, source=data.source)
    return data, labels


def _columns(config: TrainConfig) -> dict[str, Any]:
    return {"text_columns": config.text_columns, "label_column": config.label_column, "drop_empty": config.drop_empty,
            "multi_label": config.multi_label, "label_sep": config.label_sep, "group_column": config.group_column}


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
    columns = {**_columns(config), "text_columns": data.text_columns, "label_column": data.label_column,
               "group_column": None}
    how = []
    grouped = f", grouped by {config.group_column}" if config.group_column else ""

    def part(path: str | None, pool: LabeledData, fraction: float, name: str) -> tuple[LabeledData, LabeledData]:
        """(rest of pool, the named part): read from `path`, or a stratified slice of `pool`."""
        if path is not None:
            held = load_labeled(path, role=f"{name} data", **columns)
            _check_known(held, labels, name)
            how.append(f"{name} from {path}")
            return pool, held
        option = "--test-data" if name == "test" else "--val-data"
        how.append(f"stratified {fraction:.0%} {name} part{grouped}" + (f", seed {config.seed}" if name == "test" else ""))
        return split_off(pool, fraction=fraction, seed=config.seed, part=name, option=option)

    train, test = part(config.test_data, data, config.test_size, "test")
    train, val = part(config.val_data, train, config.val_size, "validation")
    check_training_labels(train, labels)
    return Splits(train=train, val=val, test=test, labels=labels, how="; ".join(how))


def _label_names(values: list[Any]) -> set[str]:
    """Every label that occurs in a part (label tuples too)."""
    if values and isinstance(values[0], tuple):
        return {lab for present in values for lab in present}
    return set(values)


def _check_known(part: LabeledData, labels: list[str], name: str) -> None:
    unseen = sorted(_label_names(part.labels) - set(labels))
    if unseen:
        shown = ", ".join(repr(u) for u in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        raise MedclfError(
            f"The {name} data has {len(unseen)} label(s) never seen in training ({shown}); "
            "fix the label column or add those classes to the training data."
        )
