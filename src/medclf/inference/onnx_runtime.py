"""The ONNX Runtime backend: where `medclf export` puts its models in a run, and the session that runs them.

Inference reads it; the exporter (medclf.export.onnx) writes what it reads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import cast

import numpy as np
import torch

from medclf.core.figures import DeferralRule
from medclf.errors import MedclfError
from medclf.model.modeling import PrecisionChoice

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_INFO = "export.json"

log = logging.getLogger(__name__)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxRunner:
    """One ONNX Runtime session on the CPU: padded token ids and mask in, float32 logits out (a `runners.Runner`)."""

    device = torch.device("cpu")
    precision = PrecisionChoice("fp32", "ONNX Runtime runs the exported graph as it is")
    module = None

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MedclfError("The ONNX backend needs onnxruntime; `pip install onnxruntime` or use backend='torch'.") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.path = Path(path)
        self.backend = "onnx-int8" if ".int8." in self.path.name else "onnx"
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise MedclfError(f"{path} is not a loadable ONNX model ({type(exc).__name__}); run `medclf export` again.") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        if set(self.input_names) - {"input_ids", "attention_mask"}:
            raise MedclfError(f"{path} needs inputs {self.input_names}; medclf exports input_ids and attention_mask only.")

    def __call__(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        feed = {name: inputs[name].numpy() for name in self.input_names}
        return self.session.run(None, feed)[0].astype(np.float32, copy=False)


MIN_INT8_AGREEMENT = 0.99
"""Smallest share of texts whose int8 decision equals PyTorch's: for export to write model.int8.onnx (on its check
texts), and for backend 'auto' to choose it (on the run's own test part)."""


def int8_trusted(folder: Path) -> bool:
    """Whether backend 'auto' may take the int8 model in `folder`: its export checked it on the run's own test part and
    it decided as PyTorch on at least MIN_INT8_AGREEMENT of those texts (an export checked on other texts, or one
    written before the check was recorded, leaves auto on the fp32 ONNX model)."""
    try:
        check = json.loads((folder / EXPORT_INFO).read_text(encoding="utf-8")).get("check") or {}
    except (OSError, ValueError, AttributeError):
        return False
    agreement = check.get("int8_agreement")
    return bool(check.get("checked_on_test_part")) and isinstance(agreement, (int, float)) \
        and agreement >= MIN_INT8_AGREEMENT


def exported_deferral(path: Path) -> DeferralRule | None:
    """The deferral rule `medclf export` re-chose for the ONNX model at `path` on the run's calibration part (its own
    probabilities), or None where the export did not re-check it (no rule, texts gone, an export from before)."""
    try:
        found = json.loads((path.parent / EXPORT_INFO).read_text(encoding="utf-8")).get("deferral") or {}
    except (OSError, ValueError, AttributeError):
        return None
    rule = (found.get("models") or {}).get(path.name) if isinstance(found, dict) else None
    return cast("DeferralRule", rule) if isinstance(rule, dict) else None


def onnx_file(run_dir: Path, backend: str, device: str) -> Path | None:
    """The ONNX model `backend` asks for in RUN/onnx/, or None for PyTorch. auto: int8 where `int8_trusted`, else the
    fp32 ONNX model, else PyTorch."""
    folder = run_dir / ONNX_DIR
    if backend == "torch":
        return None
    if backend == "auto":
        if device not in ("auto", "cpu") or not onnxruntime_available():
            return None
        if (folder / INT8_FILE).is_file() and int8_trusted(folder):
            return folder / INT8_FILE
        if (folder / INT8_FILE).is_file():
            log.info("Backend auto: the int8 model was not checked on the run's test part at %.0f%% agreement; "
                     "using the fp32 ONNX model (`--backend onnx-int8` takes it anyway).", 100 * MIN_INT8_AGREEMENT)
        return folder / FP32_FILE if (folder / FP32_FILE).is_file() else None
    if device not in ("auto", "cpu"):
        raise MedclfError(f"The ONNX backend runs on the CPU; use backend='torch' for device {device!r}.")
    name = INT8_FILE if backend == "onnx-int8" else FP32_FILE
    if not (folder / name).is_file():
        flag = " --quantize int8" if backend == "onnx-int8" else ""
        raise MedclfError(f"{run_dir} has no {ONNX_DIR}/{name}; run `medclf export {run_dir}{flag}` first, or use backend 'torch'.")
    return folder / name
