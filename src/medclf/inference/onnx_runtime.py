"""The ONNX Runtime backend: where `medclf export` puts its models in a run, and the session that runs them.

Inference reads it; the exporter (medclf.export.onnx) writes what it reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medclf.errors import MedclfError
from medclf.model.modeling import PrecisionChoice

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_INFO = "export.json"


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


def onnx_file(run_dir: Path, backend: str, device: str) -> Path | None:
    """The ONNX model `backend` asks for in RUN/onnx/, or None for PyTorch."""
    folder = run_dir / ONNX_DIR
    if backend == "torch":
        return None
    if backend == "auto":
        if device not in ("auto", "cpu") or not onnxruntime_available():
            return None
        return next((folder / name for name in (INT8_FILE, FP32_FILE) if (folder / name).is_file()), None)
    if device not in ("auto", "cpu"):
        raise MedclfError(f"The ONNX backend runs on the CPU; use backend='torch' for device {device!r}.")
    name = INT8_FILE if backend == "onnx-int8" else FP32_FILE
    if not (folder / name).is_file():
        flag = " --quantize int8" if backend == "onnx-int8" else ""
        raise MedclfError(f"{run_dir} has no {ONNX_DIR}/{name}; run `medclf export {run_dir}{flag}` first, or use backend 'torch'.")
    return folder / name
