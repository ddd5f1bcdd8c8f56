"""The server's Prometheus metrics, kept by prometheus_client.

One process: the metrics live in a registry of the app's own (two apps in one process, as in tests, do not mix).
Several `--workers`: `medclf serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before uvicorn starts them, each
worker writes its values there, and /metrics (answered by whichever worker) sums every worker's: the counts of the
whole server, not one worker's share. Names and labels carry no text.
"""

from __future__ import annotations

import os
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """Requests by endpoint, method and status; latency; texts per forward pass; inference time; texts; overload
    refusals; texts queued (summed over the live workers); the calibrated confidence of each text's decision (a
    histogram whose drop shows drift without labels); with `labels`, the predicted labels counted (opt-in)."""

    def __init__(self, *, labels: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        shared = multiprocess()
        # with several workers the values go to files (prometheus_client's multiprocess mode), collected per scrape
        self._registry = CollectorRegistry(auto_describe=True)
        where: dict[str, Any] = {"registry": None if shared else self._registry}
        self.requests = Counter("medclf_requests", "HTTP requests by endpoint, method and status.",
                                ["endpoint", "method", "status"], **where)
        self.latency = Histogram("medclf_request_duration_seconds", "Time from request to response.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, **where)
        self.batch_texts = Histogram("medclf_batch_texts", "Texts per forward pass of the server's batcher.",
                                     buckets=BATCH_BUCKETS, **where)
        self.inference_seconds = Histogram("medclf_inference_seconds",
                                           "Time per batch in the model (tokenization included).",
                                           buckets=LATENCY_BUCKETS, **where)
        self.texts = Counter("medclf_texts", "Texts classified.", **where)
        self.deferred = Counter("medclf_deferred_texts", "Texts sent to a person by the run's deferral rule "
                                "(--target-precision).", **where)
        self.rejected_overload = Counter("medclf_rejected_overload", "Requests refused with 503 because the queue "
                                         "was full.", **where)
        self.queue = Gauge("medclf_queue_texts", "Texts waiting for the model.", multiprocess_mode="livesum", **where)
        self.confidence = Histogram("medclf_prediction_confidence", "Calibrated probability of each text's decision "
                                    "(its top label; multi-label: its least sure label, present or absent).",
                                    buckets=CONFIDENCE_BUCKETS, **where)
        self.labels = Counter("medclf_predicted_labels", "Texts given each label (only with --metrics-labels).",
                              ["label"], **where) if labels else None

    def observe_predictions(self, confidence: Any, labels: list[list[str]]) -> None:
        """One forward pass's answers: each text's decision confidence, and (opt-in) its labels."""
        for value in confidence:
            self.confidence.observe(float(value))
        if self.labels is not None:
            for given in labels:
                for label in given:
                    self.labels.labels(label).inc()

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client import multiprocess as mp

        if multiprocess():
            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self._registry)

