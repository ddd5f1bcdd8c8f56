"""Using a trained run: `TextClassifier` over any backend (PyTorch, ONNX Runtime), explanations, evaluation,
file prediction (streamed) and the Spark engine."""
