"""`--method embeddings`: logistic regression on frozen, mean-pooled encoder embeddings.

One forward pass per text, no back-propagation: minutes on a CPU where fine-tuning takes tens of
minutes. The saved model/ folder is the unchanged encoder (loads with `AutoModel.from_pretrained`,
config carries id2label) plus the head, stored without pickle:

- head.safetensors: `weight` (n_labels x hidden) and `bias` (n_labels), float32;
- head.json: how to apply it: logits = normalize(mean-pool(last hidden state)) @ weight.T + bias.

The feature standardisation used while fitting is folded into weight and bias, so nothing else is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclf.errors import MedclfError
from medclf.model.batching import Batching
from medclf.model.modeling import batching_for, run_batches

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
C_GRID = (0.01, 0.1, 1.0, 10.0)
"""Inverse regularisation strengths tried for the logistic regression; the best on validation macro-F1 is kept."""


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors, pads left out."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class _Output:
    """What a Hugging Face classifier's forward returns, as far as medclf reads it."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class EmbeddingClassifier(torch.nn.Module):
    """Frozen encoder + mean pooling + L2 normalisation + a linear head. `forward` returns `.logits`
    like a transformers sequence classifier, so medclf's batching and `TextClassifier` serve it unchanged."""

    def __init__(self, encoder: Any, labels: list[str], *, normalize: bool = True) -> None:
        super().__init__()
        self.encoder: Any = encoder
        """A transformers encoder (typed Any: its config and call are dynamic)."""
        self.normalize = normalize
        hidden = int(encoder.config.hidden_size)
        self.head = torch.nn.Linear(hidden, len(labels))
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.config: Any = encoder.config
        self.config.num_labels = len(labels)
        self.config.id2label = dict(enumerate(labels))
        self.config.label2id = {lab: i for i, lab in enumerate(labels)}

    def embed(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
              inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              inputs_embeds=inputs_embeds).last_hidden_state
        pooled = mean_pool(hidden.float(), attention_mask)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **_: object) -> _Output:
        assert attention_mask is not None
        return _Output(self.head(self.embed(input_ids, attention_mask, inputs_embeds)))

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.encoder.get_input_embeddings()

    def set_head(self, weight: np.ndarray, bias: np.ndarray) -> None:
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def save_pretrained(self, directory: str | Path, **kwargs: object) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        self.encoder.save_pretrained(directory, **kwargs)
        save_file(
            {"weight": self.head.weight.detach().cpu().contiguous(), "bias": self.head.bias.detach().cpu().contiguous()},
            str(directory / HEAD_WEIGHTS),
        )
        spec = {
            "kind": "medclf-embedding-head",
            "pooling": "mean",
            "normalize": self.normalize,
            "labels": [self.config.id2label[i] for i in range(self.config.num_labels)],
            "formula": "logits = normalize(mean_pool(last_hidden_state, attention_mask)) @ weight.T + bias",
        }
        (directory / HEAD_CONFIG).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, trust_remote_code: bool = False) -> EmbeddingClassifier:
        from safetensors.torch import load_file

        from medclf.model.modeling import load_encoder

        directory = Path(directory)
        try:
            spec = json.loads((directory / HEAD_CONFIG).read_text(encoding="utf-8"))
            tensors = load_file(str(directory / HEAD_WEIGHTS))
        except Exception as exc:  # noqa: BLE001 - OSError, JSON errors, safetensors' own SafetensorError
            raise MedclfError(
                f"The embedding head in {directory} is missing or damaged ({type(exc).__name__}); retrain the run."
            ) from None
        if (not isinstance(spec, dict) or spec.get("pooling") != "mean" or not isinstance(spec.get("labels"), list)
                or "weight" not in tensors or "bias" not in tensors):
            raise MedclfError(f"{directory / HEAD_CONFIG} does not describe a mean-pooled linear head; retrain the run.")
        model = cls(load_encoder(str(directory), trust_remote_code=trust_remote_code), list(map(str, spec["labels"])),
                    normalize=bool(spec.get("normalize", True)))
        if tuple(tensors["weight"].shape) != tuple(model.head.weight.shape):
            raise MedclfError(f"The embedding head in {directory} does not match its encoder; retrain the run.")
        model.set_head(tensors["weight"].numpy(), tensors["bias"].numpy())
        return model.eval()


def is_embedding_model(directory: str | Path) -> bool:
    return (Path(directory) / HEAD_CONFIG).is_file()


def embed_texts(
    model: EmbeddingClassifier, input_ids: list[list[int]], *, batch_size: int | None, pad_id: int,
    device: torch.device,
) -> np.ndarray:
    """Pooled, normalised embeddings of pre-tokenized texts (fp32), in input order (batches as `batching_for` the
    device gives them)."""
    model.eval()
    return run_batches(lambda inputs: model.embed(inputs["input_ids"], inputs["attention_mask"]), input_ids,
                       batching=batching_for(device, batch_size), pad_id=pad_id, width=model.head.in_features,
                       device=device)


def encoder_vectors(model: torch.nn.Module, input_ids: list[list[int]], *, doc_of: list[int] | None, n_docs: int,
                    batching: Batching, pad_id: int, device: torch.device) -> np.ndarray:
    """Each text's vector in a run's encoder space (texts x hidden size): the mean of the encoder's last hidden
    states, pads left out, L2-normalised; a text read in windows (`doc_of`: each sequence's text) gets the mean of
    its windows'. The encoder of a fine-tuned model (its base model) or of an embeddings run (the one its head reads).
    Always in fp32, whatever the inference precision, so that vectors from different machines compare: what
    TextClassifier.embed gives and the drift reference holds (run/reference.py)."""
    return logits_and_vectors(model, input_ids, doc_of=doc_of, n_docs=n_docs, batching=batching, pad_id=pad_id,
                              device=device, with_logits=False)[1]


def logits_and_vectors(model: torch.nn.Module, input_ids: list[list[int]], *, doc_of: list[int] | None, n_docs: int,
                       batching: Batching, pad_id: int, device: torch.device,
                       with_logits: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """(logits per sequence, encoder_vectors per text) from one fp32 pass: the classifier's logits and the mean of
    the same last hidden states (drift reads both; two passes would cost twice). with_logits False: the vectors."""
    from medclf.model.batching import pool_logits

    width = int(getattr(model, "config").hidden_size)
    n_labels = int(getattr(model, "config").num_labels) if with_logits else 0

    def step(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = inputs["attention_mask"]
        if isinstance(model, EmbeddingClassifier):
            pooled = mean_pool(model.encoder(input_ids=inputs["input_ids"], attention_mask=mask)
                               .last_hidden_state.float(), mask)
            if not with_logits:
                return pooled
            features = torch.nn.functional.normalize(pooled, dim=-1) if model.normalize else pooled
            return torch.cat([model.head(features).float(), pooled], dim=1)
        if not with_logits:
            states = getattr(model, "base_model")(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
            return mean_pool(states.float(), mask)
        out = model(input_ids=inputs["input_ids"], attention_mask=mask, output_hidden_states=True)
        return torch.cat([out.logits.float(), mean_pool(out.hidden_states[-1].float(), mask)], dim=1)

    rows = run_batches(step, input_ids, batching=batching, pad_id=pad_id, width=n_labels + width, device=device)
    pooled = pool_logits(rows[:, n_labels:], doc_of, n_docs, "mean")
    vectors = np.asarray(pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None), dtype=np.float32)
    return (rows[:, :n_labels] if with_logits else None), vectors


def fit_logistic(
    x: np.ndarray, y: np.ndarray, n_labels: int, *, c: float, class_weight: str | None, seed: int,
    standardize: bool = True, max_iter: int = 3000,
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression; returns (weight n_labels x d, bias n_labels) acting on raw x.

    `y` holds class ids, or (multi-label) a 0/1 matrix n x n_labels: then one binary logistic regression
    per label, whose logit is that label's row (sigmoid of it is the label's probability).
    With `standardize`, features are scaled to zero mean and unit variance for the fit and the
    scaling is folded back into the weights. Two classes come back as two rows (logits -z/2, z/2)."""
    from sklearn.linear_model import LogisticRegression

    if standardize:
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        x = (x - mean) / scale
    if y.ndim == 2:  # multi-label: one-vs-rest, each label's positive-class logit
        rows = [LogisticRegression(C=c, max_iter=max_iter, class_weight=class_weight, random_state=seed).fit(x, y[:, j])
                for j in range(y.shape[1])]
        coef = np.vstack([r.coef_[0] for r in rows])
        intercept = np.array([r.intercept_[0] for r in rows])
    else:
        probe = LogisticRegression(C=c, max_iter=max_iter, class_weight=class_weight, random_state=seed)
        probe.fit(x, y)
        coef, intercept = probe.coef_, probe.intercept_
    if coef.shape[0] == 1:  # scikit-learn gives one row for two classes: logits (0, z) become (-z/2, z/2)
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    if coef.shape[0] != n_labels:
        raise MedclfError("Every class needs training rows for the logistic-regression head; add rows.")
    if standardize:  # the same decision on raw x
        coef = coef / scale
        intercept = intercept - coef @ mean
    return coef.astype(np.float32), intercept.astype(np.float32)
