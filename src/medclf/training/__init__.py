"""Making a run: splits, the fine-tuning loop and its stages, the frozen-feature fit, the pipeline that writes the
run, cross-validation and multi-process training."""
