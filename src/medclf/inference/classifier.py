"""Inference with scikit-learn habits: predict / predict_proba, a string gives one result, a list a list."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch

from medclf.config import BACKENDS, INFER_BATCH_SIZE, TRAIN_DEFAULTS, LoadOptions
from medclf.core.conformal import ConformalSets, SetRequest
from medclf.core.figures import Decision, DeferralRule
from medclf.core.tasks import softmax, task_for
from medclf.errors import MedclfError
from medclf.inference.onnx_runtime import OnnxRunner, exported_deferral, onnx_file
from medclf.inference.runners import Runner, TorchRunner
from medclf.model.batching import Batching, Encoded, encode, pool_logits, unpaired_surrogate
from medclf.model.modeling import (
    PrecisionChoice,
    batching_for,
    choose_device,
    load_classifier,
    load_tokenizer,
    run_batches,
)
from medclf.run.artifacts import CALIBRATION_PREDICTIONS_FILE, CONFIG_FILE, MODEL_DIR, is_run_dir, read_json
from medclf.run.reference import Priors, read_priors
from medclf.run.runspec import RunSpec

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from medclf.inference.explain import Explanation

log = logging.getLogger(__name__)
TOKENIZE_AHEAD = 4096
"""Texts per slice when tokenizing overlaps the model's work (on a GPU): a slice's tokenizing (~0.2-1 s) hides
behind the previous slice's forward passes."""
DEFAULT_BATCH_SIZE = INFER_BATCH_SIZE
"""Texts per batch on a CPU (a GPU batches by a token budget: modeling.batching_for). Measured on 2 CPU cores, 578 abstracts of ~219 tokens, fp32: batch 8 29.8, 12 30.1, 16 29.4-31.1,
32 25.8, 64 25.4 texts/s (probably cache: a smaller batch's activations stay in it)."""


@dataclass(frozen=True)
class Predictions:
    """What the classifier says about each of a list of texts: rows in the order of the texts; a slice of it is the
    same for those texts."""

    probabilities: np.ndarray
    """predict_proba's rows."""
    decided: list[Decision]
    """predict's answers: a label each, or (multi-label) a list of labels each."""
    windows: list[tuple[int, int] | None]
    """long_text='chunk': the character span (start, end) of the window whose logit for the predicted label
    (multi-label: the most probable label) is highest; None per text otherwise. Spans, never text."""
    multi_label: bool

    def __len__(self) -> int:
        return len(self.decided)

    def __getitem__(self, rows: slice) -> Predictions:
        return Predictions(self.probabilities[rows], self.decided[rows], self.windows[rows], self.multi_label)


@dataclass(frozen=True)
class Routed:
    """predict_or_defer's answer for one text: decided automatically (its label), or deferred to a person, and why."""

    label: Decision | None
    """The label decided automatically (multi-label: the list of labels); None when the text is deferred."""
    deferred: bool
    score: float
    """The calibrated probability the rule compared with its threshold: the top one (multi-label: that of the text's
    least sure label decision)."""
    reason: str | None
    """Why the text was deferred (never the text itself); None when decided."""


class TextClassifier:
    """A trained classifier loaded from a run directory (or its model/ folder).

    >>> clf = TextClassifier.load("runs/demo")
    >>> clf.predict("Crushing chest pain radiating to the left arm.")
    'cardiology'
    >>> clf.predict_proba(["...", "..."]).shape
    (2, 6)

    The model runs in PyTorch (`backend="torch"`) or in ONNX Runtime from a `medclf export`
    (`"onnx"`: fp32, within 1e-4 of PyTorch; `"onnx-int8"`: int8 weights). Same API, same outputs.

    A multi-label run (`multi_label` is True) gives each label's own probability (sigmoid; a row does
    not sum to 1), and `predict` gives the labels at or above their thresholds (tuned on validation,
    saved with the run): a list of labels for a string, a list of such lists for a list.
    """

    def __init__(
        self,
        model: torch.nn.Module | Runner,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int = TRAIN_DEFAULTS["max_length"],
        long_text: str = TRAIN_DEFAULTS["long_text"],
        batch_size: int | None = None,
        device: torch.device | None = None,
        precision: str = "auto",
        spec: RunSpec | None = None,
        labels: list[str] | None = None,
        stride: int | None = None,
        max_chunks: int = TRAIN_DEFAULTS["max_chunks"],
        pool: str = TRAIN_DEFAULTS["pool"],
        multi_label: bool = False,
        thresholds: list[float] | np.ndarray | None = None,
        temperature: float = 1.0,
    ) -> None:
        self.run_dir: Path | None = None
        """The run directory this classifier was loaded from (None when built in memory)."""
        self._torch_twin: torch.nn.Module | None = None
        self._conformal: ConformalSets | None = None
        self.priors: Priors | None = None
        """With LoadOptions.priors: the shares every probability is moved to (Bayes' correction; `medclf drift`)."""
        self.multi_label = multi_label
        self.task = task_for(multi_label)
        if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
            raise MedclfError(f"The run's temperature must be a positive number, not {temperature!r}; retrain the run.")
        self.temperature = float(temperature)
        """Calibration: logits are divided by it before softmax/sigmoid (1.0: uncalibrated)."""
        self.stride = stride
        self.max_chunks = max_chunks
        self.pool = pool
        self.runner: Runner = TorchRunner(model, device=device, precision=precision) \
            if isinstance(model, torch.nn.Module) else model
        """What runs the model on a padded batch (PyTorch or ONNX Runtime: `inference.runners`)."""
        if self.runner.module is not None and not labels:
            config: PretrainedConfig = getattr(self.runner.module, "config")
            labels = [str(label) for _, label in sorted((int(i), label) for i, label in (config.id2label or {}).items())]
        if not labels:
            raise MedclfError("A classifier that is not a PyTorch model needs its labels.")
        self._labels = list(labels)
        self._thresholds = None
        if multi_label:
            self._thresholds = np.full(len(self._labels), 0.5) if thresholds is None else np.asarray(thresholds, float)
            if self._thresholds.shape != (len(self._labels),):
                raise MedclfError(f"{len(self._thresholds)} thresholds for {len(self._labels)} labels; retrain the run.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.long_text = long_text
        self.batch_size = batch_size
        """Texts per batch; None: by device (`modeling.batching_for`: 16 on a CPU, a token budget on a GPU)."""
        self.spec = spec
        """The run's description (train_config.json) when loaded from a run directory; None when built in memory."""
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def backend(self) -> str:
        """'torch', 'onnx' or 'onnx-int8'."""
        return self.runner.backend

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def precision(self) -> PrecisionChoice:
        """fp32, or bf16 autocast (PyTorch; by default on a CUDA GPU that supports it)."""
        return self.runner.precision

    @property
    def labels(self) -> list[str]:
        """Class names, in the order of predict_proba's columns."""
        return list(self._labels)

    @property
    def threshold_array(self) -> np.ndarray | None:
        """thresholds as an array in the order of `labels` (what Task.decide takes); None for a single-label run."""
        return None if self._thresholds is None else np.array(self._thresholds, dtype=float)

    @property
    def thresholds(self) -> dict[str, float] | None:
        """Multi-label: each label's decision threshold (None for a single-label run)."""
        return None if self._thresholds is None else {lab: float(t) for lab, t in zip(self._labels, self._thresholds)}

    @classmethod
    def load(
        cls,
        path: str | Path,
        options: LoadOptions | None = None,
        *,
        backend: str | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
        long_text: str | None = None,
        trust_remote_code: bool = False,
    ) -> TextClassifier:
        """Load a run directory written by `medclf train` (or its model/ folder), as `options` say
        (config.LoadOptions; the keywords are shorthand that change those fields).

        backend: "torch"; "onnx" or "onnx-int8" (the files `medclf export` wrote into RUN/onnx/);
        "auto": onnx-int8 if exported and checked on the run's test part (onnx_runtime.int8_trusted), else onnx if
        exported, else torch (ONNX only with onnxruntime
        installed and the device left on auto or cpu). threads: ONNX Runtime's intra-op threads
        (default: one per core). long_text: how texts over the window are handled at inference,
        'truncate' | 'head-tail' | 'chunk' (default: as the run was trained). A run trained on short
        texts can read long ones in windows (chunk, with the run's --pool or max) without retraining.
        """
        options = (options or LoadOptions()).replace(backend=backend, device=device, batch_size=batch_size,
                                                     threads=threads, long_text=long_text)
        backend, device, batch_size = options.backend, options.device, options.batch_size
        threads, long_text = options.threads, options.long_text
        path = Path(path)
        if not path.exists():
            raise MedclfError(f"Run directory {path} does not exist; pass the --output of a `medclf train` run.")
        if is_run_dir(path):
            spec, model_dir = RunSpec.read(path), path / MODEL_DIR
        elif (path / "config.json").is_file() and (path.parent / CONFIG_FILE).is_file():
            spec, model_dir = RunSpec.read(path.parent), path
        else:
            raise MedclfError(
                f"{path} is not a medclf run directory (no {CONFIG_FILE} and {MODEL_DIR}/config.json); "
                "pass the --output of a `medclf train` run."
            )
        if long_text is not None and long_text != spec.long_text:
            log.info("Long texts: %s at inference (the run was trained with %s).", long_text, spec.long_text)
        common: dict[str, Any] = {"max_length": spec.max_length, "long_text": long_text or spec.long_text, "stride": spec.stride,
                  "max_chunks": spec.max_chunks, "pool": spec.pool, "batch_size": batch_size, "spec": spec,
                  "multi_label": spec.multi_label, "temperature": spec.temperature,
                  "thresholds": spec.threshold_list(_config_labels(model_dir))}
        tokenizer = load_tokenizer(str(model_dir), trust_remote_code=trust_remote_code)
        onnx_path = onnx_file(model_dir.parent, backend, device)
        if onnx_path is not None and spec.deferral is not None and exported_deferral(onnx_path) is None:
            # a run that defers is never used without its rule: an ONNX model whose export did not re-check it
            if backend != "auto":
                raise MedclfError(f"The run's deferral threshold was not re-checked for {onnx_path.name}; run "
                                  "`medclf export` again with the training table where it was trained from, or use "
                                  "--backend torch.")
            log.info("Backend auto: %s has no re-checked deferral threshold; PyTorch instead.", onnx_path.name)
            onnx_path = None
        if onnx_path is not None:
            if options.precision == "bf16":
                raise MedclfError("precision bf16 is for the PyTorch backend; pass --backend torch, or leave precision "
                                  "on auto with ONNX.")
            labels = _config_labels(model_dir)
            log.info("Backend: ONNX Runtime (%s).", onnx_path.name)
            clf = cls(OnnxRunner(onnx_path, threads=threads), tokenizer, labels=labels, **common)
            clf.run_dir = model_dir.parent
            return clf.with_priors(options)
        from medclf.model.embeddings import EmbeddingClassifier, is_embedding_model

        if is_embedding_model(model_dir):  # --method embeddings: frozen encoder + linear head
            model: torch.nn.Module = EmbeddingClassifier.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        else:
            model = load_classifier(str(model_dir), trust_remote_code=trust_remote_code)
        precision = spec.config.inference_request(options.precision)
        clf = cls(model, tokenizer, device=choose_device(device), precision=precision, **common)
        clf.run_dir = model_dir.parent
        return clf.with_priors(options)

    def with_priors(self, options: LoadOptions) -> TextClassifier:
        """This classifier with the priors `options` name (none: unchanged); a run whose deferral rule or label sets
        the new shares would void is refused unless options.void_guarantees."""
        if options.priors is None:
            return self
        from medclf.run.reference import model_fingerprint

        priors = read_priors(options.priors, labels=self._labels, multi_label=self.multi_label,
                             model_sha256=None if self.run_dir is None else model_fingerprint(self.run_dir))
        guaranteed = [what for what, held in (
            ("deferral threshold", self.spec is not None and self.spec.deferral is not None),
            ("label sets", self.run_dir is not None and (self.run_dir / CALIBRATION_PREDICTIONS_FILE).is_file()))
            if held]
        if guaranteed and not options.void_guarantees:
            raise MedclfError(f"New priors change the calibrated probabilities this run's {' and '.join(guaranteed)} "
                              "were calibrated on, so their guarantees would no longer hold; pass --void-guarantees "
                              "to apply the priors anyway, or predict without --priors.")
        if guaranteed:
            log.warning("Priors from %s applied: the run's %s no longer carry their guarantees.", options.priors,
                        " and ".join(guaranteed))
        self.priors = priors
        return self

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated logits (one row per text) -> the probabilities every prediction reads: the task's, moved to the
        loaded priors where there are any."""
        probs = self.task.probabilities(logits)
        if self.priors is None:
            return probs
        return self.task.reweight(probs, np.array(self.priors.train), np.array(self.priors.shares))

    def _logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        window_logits, encoded = self._window_logits(texts, batch_size)
        return self.document_logits(window_logits, encoded.doc_of, encoded.n_docs)

    def document_logits(self, window_logits: np.ndarray, doc_of: list[int] | None, n_docs: int) -> np.ndarray:
        """One (calibrated) row per text: the windows' logits pooled as the run pools them, divided by T."""
        return pool_logits(window_logits, doc_of, n_docs, self.pool) / self.temperature

    def sequence_logits(self, sequences: list[list[int]], batch_size: int | None = None) -> np.ndarray:
        """Logits per token-id sequence, in order: length-sorted batches, each padded to its longest."""
        return run_batches(self.runner, sequences, batching=self._batching(self.device, batch_size),
                           pad_id=self.pad_id, width=len(self._labels), device=self.device, precision=self.precision)

    def _batching(self, device: torch.device, batch_size: int | None) -> Batching:
        return batching_for(device, batch_size or self.batch_size, default=INFER_BATCH_SIZE)

    def _window_logits(self, texts: list[str], batch_size: int | None = None) -> tuple[np.ndarray, Encoded]:
        """Logits per sequence (per window with long_text='chunk'), and the encoding they came from."""
        _check_texts(texts)
        if self._overlap_tokenizing() and len(texts) > TOKENIZE_AHEAD:
            return self._overlapped_logits(texts, batch_size)
        encoded = self.encode(texts) if texts else Encoded([], 0, 0, 0)
        return self.sequence_logits(encoded.input_ids, batch_size), encoded

    def _overlap_tokenizing(self) -> bool:
        """Tokenize the next slice of texts while the model runs this one: where the model runs on a GPU (on a CPU the
        cores that would tokenize are the ones running the model)."""
        return self.device.type == "cuda"

    def _overlapped_logits(self, texts: list[str], batch_size: int | None) -> tuple[np.ndarray, Encoded]:
        """`_window_logits` in slices of TOKENIZE_AHEAD texts: a thread tokenizes slice i+1 (the fast tokenizer works
        outside the GIL) while this one queues slice i's batches on the device."""
        from concurrent.futures import ThreadPoolExecutor

        slices = [texts[i : i + TOKENIZE_AHEAD] for i in range(0, len(texts), TOKENIZE_AHEAD)]
        logits: list[np.ndarray] = []
        parts: list[Encoded] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medclf-tokenize") as pool:
            ahead = pool.submit(self.encode, slices[0])
            for i in range(len(slices)):
                encoded = ahead.result()
                if i + 1 < len(slices):
                    ahead = pool.submit(self.encode, slices[i + 1])
                logits.append(self.sequence_logits(encoded.input_ids, batch_size))
                parts.append(encoded)
        return np.concatenate(logits), Encoded.concat(parts)

    def predictions(self, texts: list[str], *, batch_size: int | None = None) -> Predictions:
        """Everything predict and predict_proba give, and in chunk mode the deciding window of each text, in one
        pass (files, the server)."""
        window_logits, encoded = self._window_logits(list(texts), batch_size)
        probs = self.probabilities(self.document_logits(window_logits, encoded.doc_of, encoded.n_docs))
        best: list[tuple[int, int] | None] = [None] * len(texts)
        if encoded.doc_of is not None and encoded.char_spans is not None:
            score = np.full(len(texts), -np.inf)
            winner = probs.argmax(axis=1)
            for w, doc in enumerate(encoded.doc_of):
                value = window_logits[w, winner[doc]]
                if value > score[doc]:
                    score[doc], best[doc] = value, encoded.char_spans[w]
        return Predictions(probabilities=probs, decided=self.decide(probs), windows=best, multi_label=self.multi_label)

    def encode(self, texts: list[str], *, token_offsets: bool = False) -> Encoded:
        """Token ids as the run was trained: cut or windowed the same way (token_offsets: where each came from)."""
        return encode(self.tokenizer, texts, max_length=self.max_length, long_text=self.long_text, stride=self.stride,
                      max_chunks=self.max_chunks, token_offsets=token_offsets)

    @overload
    def predict_proba(self, texts: str, *, batch_size: int | None = None) -> np.ndarray: ...
    @overload
    def predict_proba(self, texts: list[str], *, batch_size: int | None = None) -> np.ndarray: ...

    def predict_proba(self, texts: str | list[str], *, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities: shape (n_labels,) for a string, (n_texts, n_labels) for a list.
        Multi-label: each label's own probability (rows need not sum to 1)."""
        single = isinstance(texts, str)
        batch: list[str] = [texts] if isinstance(texts, str) else list(texts)
        probs = self.probabilities(self._logits(batch, batch_size))
        return probs[0] if single else probs

    @overload
    def predict(self, texts: str, *, batch_size: int | None = None) -> Decision: ...
    @overload
    def predict(self, texts: list[str], *, batch_size: int | None = None) -> list[Decision]: ...

    def predict(self, texts: str | list[str], *, batch_size: int | None = None) -> Decision | list[Decision]:
        """The most probable label: a string for a string, a list for a list.
        Multi-label: the labels at or above their thresholds, a list for a string, a list of lists for a list."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        decided = self.decide(np.atleast_2d(probs))
        return decided[0] if probs.ndim == 1 else decided

    @overload
    def predict_set(self, texts: str, *, coverage: float = 0.9, score: str = "lac", by_class: bool = False,
                    batch_size: int | None = None) -> list[str]: ...
    @overload
    def predict_set(self, texts: list[str], *, coverage: float = 0.9, score: str = "lac", by_class: bool = False,
                    batch_size: int | None = None) -> list[list[str]]: ...

    def predict_set(self, texts: str | list[str], *, coverage: float = 0.9, score: str = "lac", by_class: bool = False,
                    batch_size: int | None = None) -> list[str] | list[list[str]]:
        """The labels still possible for each text at `coverage` (a conformal set, most probable first): where new
        texts are drawn as the run's calibration part was, a set holds the true label at least that often.
        score: 'lac' (smallest sets) or 'aps' (sets that grow with how hard a text is); by_class: calibrated per class
        (each class keeps the coverage; core/conformal.py). A list for a string, a list of lists for a list."""
        request = SetRequest(coverage=coverage, score=score, by_class=by_class)
        sets = self.conformal_sets()  # before the model runs: a run without a calibration part says so at once
        probs = self.predict_proba(texts, batch_size=batch_size)
        found = sets.sets(np.atleast_2d(probs), self._labels, request)
        return found[0] if probs.ndim == 1 else found

    @property
    def deferral(self) -> DeferralRule | None:
        """The run's deferral rule (`train --target-precision`): its threshold and how it was chosen, for this backend
        (PyTorch: as trained; an ONNX model: as `medclf export` re-chose it on that model's probabilities); None for
        a run without one. A run with a rule whose ONNX model was not re-checked is refused in one sentence."""
        rule = self.spec.deferral if self.spec is not None else None
        if rule is None or not isinstance(self.runner, OnnxRunner):
            return rule
        found = exported_deferral(self.runner.path)
        if found is None:
            raise MedclfError(f"The run's deferral threshold was not re-checked for {self.runner.path.name}; run "
                              "`medclf export` again with the training table where it was trained from, or load the "
                              "run with --backend torch.")
        return found

    @overload
    def predict_or_defer(self, texts: str, *, batch_size: int | None = None) -> Routed: ...
    @overload
    def predict_or_defer(self, texts: list[str], *, batch_size: int | None = None) -> list[Routed]: ...

    def predict_or_defer(self, texts: str | list[str], *, batch_size: int | None = None) -> Routed | list[Routed]:
        """Each text decided automatically (its label) where its calibrated top probability reaches the run's
        threshold, else deferred to a person with the reason: the automatic decisions keep the precision the run
        was trained for (`--target-precision`), with its stated guarantee. Multi-label: decided (its list of labels)
        where every label's decision, present or absent, reaches that label's threshold. `predict` and `decide` are
        unchanged."""
        self._rule()  # a run without a rule says so before the model runs
        probs = self.predict_proba(texts, batch_size=batch_size)
        found = self.route(np.atleast_2d(probs))
        return found[0] if probs.ndim == 1 else found

    def route(self, probs: np.ndarray) -> list[Routed]:
        """predict_proba's rows decided or deferred by the run's rule (predict_or_defer without the model pass)."""
        from medclf.core.deferral import decided_labels, rule_thresholds

        rule = self._rule()
        target = rule["target_precision"]
        limits = rule_thresholds(rule, self._labels)
        confidence = self.task.decision_confidence(probs, self._thresholds)
        taken = decided_labels(self.task, probs, rule, self._labels, self._thresholds)
        out = []
        for row, conf, took in zip(self.decide(probs), confidence, taken, strict=True):
            score = float(conf.min())
            if took.all():
                out.append(Routed(label=row, deferred=False, score=score, reason=None))
                continue
            if not np.isfinite(limits[~took]).all():
                reason = f"precision {target:.0%} could not be shown on the calibration part"
            elif not self.multi_label:
                reason = (f"top probability {score:.3f} is below the threshold {limits[0]:.3f} at which the automatic "
                          f"decisions reach precision {target:.0%}")
            else:
                names = [self._labels[j] for j in np.flatnonzero(~took)]
                reason = (f"undecided label(s) {', '.join(names)}: the probability of each one's decision is below "
                          f"its threshold at which that label's automatic decisions reach precision {target:.0%}")
            out.append(Routed(label=None, deferred=True, score=score, reason=reason))
        return out

    def _rule(self) -> DeferralRule:
        rule = self.deferral
        if rule is None:
            raise MedclfError("This run has no deferral rule; train it with --target-precision 0.9 to "
                              "defer the texts it cannot decide at that precision.")
        return rule

    def label_sets(self, probs: np.ndarray, request: SetRequest) -> list[list[str]]:
        """predict_proba's rows turned into conformal label sets (predict_set without the model pass)."""
        return self.conformal_sets().sets(probs, self._labels, request)

    def conformal_sets(self) -> ConformalSets:
        """The run's label-set calibration: its calibration part's true labels and calibrated probabilities."""
        if self._conformal is not None:
            return self._conformal
        if self.multi_label:
            raise MedclfError("Label sets are for single-label runs; a multi-label run decides each label on its own "
                              "(predict gives the labels at or above their thresholds).")
        path = None if self.run_dir is None else self.run_dir / CALIBRATION_PREDICTIONS_FILE
        if path is None or not path.is_file():
            raise MedclfError("This run has no calibration part, so it cannot give label sets; train it again with "
                              "--calibration-size 0.1 (10% of the training rows held out to calibrate the sets).")
        import pandas as pd

        frame = pd.read_csv(path, dtype={"label": str}, keep_default_na=False)
        index = {lab: k for k, lab in enumerate(self._labels)}
        columns = [f"prob_{lab}" for lab in self._labels]
        if "label" not in frame.columns or any(c not in frame.columns for c in columns) or \
                not frame["label"].isin(list(index)).all():
            raise MedclfError(f"{path} does not match the run's labels; the run is damaged, train it again.")
        self._conformal = ConformalSets(frame[columns].to_numpy(dtype=float),
                                        frame["label"].map(index).to_numpy(dtype=int))
        return self._conformal

    def explain(self, text: str, *, method: str = "integrated-gradients", target: str | None = None,
                steps: int = 32) -> Explanation:
        """Per-word attribution scores for the predicted label (or `target`): a medclf.inference.explain.Explanation
        with the label, its probability, every label's probability, and {"word", "start", "end", "score",
        "seen"} per word. method: "integrated-gradients" (needs PyTorch; an ONNX-loaded classifier loads the
        run's PyTorch model for it) or "occlusion" (any backend)."""
        from medclf.inference.explain import Explainer

        return Explainer(self).explain(text, method=method, target=target, steps=steps)

    def embed(self, texts: list[str], *, batch_size: int | None = None) -> np.ndarray:
        """Each text's vector in the run's encoder space (texts x hidden size): the mean of the encoder's last hidden
        states, pads left out, L2-normalised; a text read in windows gets the mean of its windows'. For a fine-tuned
        run, the fine-tuned encoder's space; for an embeddings run, the space its head reads. Always computed in fp32
        (model.embeddings.encoder_vectors), so vectors from machines of different kinds compare."""
        from medclf.model.embeddings import encoder_vectors

        model = self.torch_model()
        device = next(model.parameters()).device
        encoded = self.encode(list(texts)) if texts else Encoded([], 0, 0, 0)
        return encoder_vectors(model, encoded.input_ids, doc_of=encoded.doc_of, n_docs=encoded.n_docs,
                               batching=self._batching(device, batch_size), pad_id=self.pad_id, device=device)

    def predict_proba_and_embed(self, texts: list[str], *, batch_size: int | None = None
                                ) -> tuple[np.ndarray, np.ndarray]:
        """predict_proba and embed of the same texts from one forward pass (PyTorch in fp32, where both agree with
        the separate calls); any other backend or precision makes the two calls."""
        from medclf.model.embeddings import logits_and_vectors

        if self.runner.module is None or self.precision.name != "fp32":
            return self.predict_proba(list(texts), batch_size=batch_size), self.embed(list(texts), batch_size=batch_size)
        _check_texts(texts)
        encoded = self.encode(list(texts)) if texts else Encoded([], 0, 0, 0)
        logits, vectors = logits_and_vectors(self.runner.module, encoded.input_ids, doc_of=encoded.doc_of,
                                             n_docs=encoded.n_docs, batching=self._batching(self.device, batch_size),
                                             pad_id=self.pad_id, device=self.device)
        assert logits is not None
        return self.probabilities(self.document_logits(logits, encoded.doc_of, encoded.n_docs)), vectors

    def torch_model(self) -> torch.nn.Module:
        """The PyTorch model behind this classifier (what gradients need): its own with the torch backend; for ONNX,
        the run's PyTorch model, loaded on the CPU once."""
        if self.runner.module is not None:
            return self.runner.module
        if self._torch_twin is None:
            if self.run_dir is None:
                raise MedclfError("Integrated gradients need the PyTorch model; load the run with backend='torch'.")
            self._torch_twin = type(self).load(self.run_dir, backend="torch", device="cpu").torch_model()
        return self._torch_twin

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """predict_proba's rows -> how sure each text's decision is: its calibrated top probability (multi-label: the
        probability of its least sure label's decision, present or absent, at the run's thresholds)."""
        return self.task.decision_confidence(probs, self._thresholds).min(axis=1)

    def decide(self, probs: np.ndarray) -> list[Decision]:
        """predict_proba's rows turned into predictions: a label each, or (multi-label) a list of labels each."""
        return [self.task.names(row, self._labels) for row in self.task.decide(probs, self._thresholds)]


def _check_texts(texts: list[str]) -> None:
    """Refuse what no model should read: a non-string, or a text with an unpaired surrogate (not valid Unicode)."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise MedclfError(f"Text {i} is a {type(text).__name__}, not a string; pass strings.")
        at = unpaired_surrogate(text)
        if at is not None:
            raise MedclfError(f"Text {i} holds an unpaired surrogate code point at character {at}, which is not "
                              "valid Unicode; decode the text correctly (as UTF-8) before passing it.")


def _config_labels(model_dir: Path) -> list[str]:
    id2label = read_json(model_dir / "config.json").get("id2label") or {}
    return [str(id2label[str(i)]) for i in range(len(id2label))]


__all__ = ["BACKENDS", "DEFAULT_BATCH_SIZE", "Routed", "TextClassifier", "softmax"]
