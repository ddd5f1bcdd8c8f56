"""medclf: fine-tune, evaluate and serve BERT-family classifiers for medical text."""

from __future__ import annotations

from medclf._version import __version__
from medclf.config import TrainConfig
from medclf.errors import MedclfError

__all__ = ["MedclfError", "TextClassifier", "TrainConfig", "TrainResult", "__version__", "evaluate", "train"]


def __getattr__(name: str):  # lazy: `medclf --version` and `--help` should not import torch
    if name == "TextClassifier":
        from medclf.inference.classifier import TextClassifier

        return TextClassifier
    if name in ("train", "TrainResult"):
        from medclf.training import pipeline

        return getattr(pipeline, name)
    if name == "evaluate":
        from medclf.inference.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'medclf' has no attribute {name!r}")
