"""Encoders and tokens: tokenizing, windows and batches, loading models offline-first, device and precision,
batched forward passes, the frozen-embedding classifier."""
