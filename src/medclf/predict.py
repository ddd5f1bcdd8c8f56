"""Inference with scikit-learn habits: predict / predict_proba, a string gives one result, a list a list."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from medclf.artifacts import CONFIG_FILE, MODEL_DIR, is_run_dir, read_json
from medclf.batching import collate, encode, sorted_batches
from medclf.errors import MedclfError
from medclf.modeling import choose_device, load_classifier, load_tokenizer

log = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 16
"""Measured on 2 CPU cores, 578 abstracts of ~219 tokens, fp32: batch 8 29.8, 12 30.1, 16 29.4-31.1,
32 25.8, 64 25.4 texts/s (probably cache: a smaller batch's activations stay in it)."""


class TextClassifier:
    """A trained classifier loaded from a run directory (or its model/ folder).

    >>> clf = TextClassifier.load("runs/demo")
    >>> clf.predict("Crushing chest pain radiating to the left arm.")
    'cardiology'
    >>> clf.predict_proba(["...", "..."]).shape
    (2, 6)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        max_length: int = 256,
        long_text: str = "truncate",
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: torch.device | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.device = device or next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.long_text = long_text
        self.batch_size = batch_size
        self.config = config or {}
        id2label = model.config.id2label
        self._labels = [str(id2label[i]) for i in range(len(id2label))]
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def labels(self) -> list[str]:
        """Class names, in the order of predict_proba's columns."""
        return list(self._labels)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        trust_remote_code: bool = False,
    ) -> TextClassifier:
        """Load a run directory written by `medclf train` (or its model/ folder)."""
        path = Path(path)
        if not path.exists():
            raise MedclfError(f"Run directory {path} does not exist; pass the --output of a `medclf train` run.")
        config: dict[str, Any] = {}
        if is_run_dir(path):
            config = read_json(path / CONFIG_FILE)
            model_dir = path / MODEL_DIR
        elif (path / "config.json").is_file() and (path.parent / CONFIG_FILE).is_file():
            config = read_json(path.parent / CONFIG_FILE)
            model_dir = path
        else:
            raise MedclfError(
                f"{path} is not a medclf run directory (no {CONFIG_FILE} and {MODEL_DIR}/config.json); "
                "pass the --output of a `medclf train` run."
            )
        tokenizer = load_tokenizer(str(model_dir), trust_remote_code=trust_remote_code)
        from medclf.embeddings import EmbeddingClassifier, is_embedding_model

        if is_embedding_model(model_dir):  # --method embeddings: frozen encoder + linear head
            model = EmbeddingClassifier.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        else:
            model = load_classifier(str(model_dir), trust_remote_code=trust_remote_code)
        options = config.get("config", {})
        return cls(
            model, tokenizer, max_length=int(options.get("max_length", 256)),
            long_text=options.get("long_text", "truncate"), batch_size=batch_size, device=choose_device(device),
            config=config,
        )

    @torch.inference_mode()
    def _logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise MedclfError(f"Text {i} is a {type(text).__name__}, not a string; pass strings.")
        if not texts:
            return np.zeros((0, len(self._labels)), dtype=np.float32)
        encoded = encode(self.tokenizer, texts, max_length=self.max_length, long_text=self.long_text)
        return batched_logits(
            self.model, encoded.input_ids, batch_size=batch_size or self.batch_size, pad_id=self._pad_id, device=self.device
        )

    @overload
    def predict_proba(self, texts: str, *, batch_size: int | None = None) -> np.ndarray: ...
    @overload
    def predict_proba(self, texts: list[str], *, batch_size: int | None = None) -> np.ndarray: ...

    def predict_proba(self, texts: str | list[str], *, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities: shape (n_labels,) for a string, (n_texts, n_labels) for a list."""
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        logits = self._logits(batch, batch_size)
        probs = softmax(logits)
        return probs[0] if single else probs

    @overload
    def predict(self, texts: str, *, batch_size: int | None = None) -> str: ...
    @overload
    def predict(self, texts: list[str], *, batch_size: int | None = None) -> list[str]: ...

    def predict(self, texts: str | list[str], *, batch_size: int | None = None) -> str | list[str]:
        """The most probable label: a string for a string, a list for a list."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        if probs.ndim == 1:
            return self._labels[int(probs.argmax())]
        return [self._labels[int(i)] for i in probs.argmax(axis=1)]


def forward_batches(
    model: torch.nn.Module, input_ids: list[list[int]], *, batch_size: int, pad_id: int, device: torch.device
) -> Iterator[tuple[list[int], Any]]:
    """Run the model in eval mode over batches sorted by length and padded per batch.

    Yields (the batch's indices into input_ids, the model's outputs); the caller runs it under
    torch.inference_mode. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        for batch in sorted_batches([len(ids) for ids in input_ids], batch_size):
            inputs = collate([input_ids[i] for i in batch], pad_id)
            yield batch, model(**{k: v.to(device) for k, v in inputs.items()})
    finally:
        model.train(was_training)


@torch.inference_mode()
def batched_logits(
    model: torch.nn.Module, input_ids: list[list[int]], *, batch_size: int, pad_id: int, device: torch.device
) -> np.ndarray:
    """Logits for pre-tokenized texts, in input order."""
    out = np.zeros((len(input_ids), model.config.num_labels), dtype=np.float32)
    for batch, outputs in forward_batches(model, input_ids, batch_size=batch_size, pad_id=pad_id, device=device):
        out[batch] = outputs.logits.float().cpu().numpy()
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
