"""What runs a loaded model: a runner takes one padded batch and gives its float32 logits.

`TextClassifier` holds one runner and never asks which backend it is: `TorchRunner` (a PyTorch model on its device,
under the inference precision) or `onnx_runtime.OnnxRunner` (an ONNX Runtime session on the CPU). Batching, the
copy to the device, autocast and gathering the logits in input order are `model.modeling.run_batches`' for both.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from medclf.model.modeling import PrecisionChoice, inference_precision


class Runner(Protocol):
    """A padded batch (`input_ids`, `attention_mask`, on `device`) in, one row of logits per sequence out."""

    backend: str
    """'torch', 'onnx' or 'onnx-int8': what the run's outputs say served them."""
    device: torch.device
    precision: PrecisionChoice

    @property
    def module(self) -> torch.nn.Module | None:
        """The PyTorch model, where the runner has one (gradients need it); None for ONNX Runtime."""

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | np.ndarray: ...


class TorchRunner:
    """A PyTorch classifier in eval mode on `device` (default: where its weights are); logits stay on the device."""

    backend = "torch"

    def __init__(self, module: torch.nn.Module, *, device: torch.device | None = None, precision: str = "auto") -> None:
        self.device = device or next(module.parameters()).device
        self._module = module.to(self.device).eval()
        self.precision = inference_precision(precision, self.device)
        """fp32, or bf16 autocast (by default on a CUDA GPU that supports it)."""

    @property
    def module(self) -> torch.nn.Module:
        return self._module

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._module(**inputs).logits
