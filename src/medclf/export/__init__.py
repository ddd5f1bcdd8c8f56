"""Exporting a run to other runtimes: ONNX (fp32 and int8) with a self-check."""
