"""`medclf serve`: a run over HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from medclf.cli._common import BackendOpt, DeviceOpt, InferPrecisionOpt, LongTextOpt, RunDirArg, app, guard
from medclf.serving.settings import ServeSettings

S = ServeSettings(run_dir="-")  # the defaults of `medclf serve` are the settings'


@app.command()
def serve(
    run_dir: RunDirArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. 127.0.0.1 (this machine only) by default; 0.0.0.0 opens it to the network.")] = S.host,
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = S.port,
    backend: BackendOpt = S.backend,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most texts per request, and per forward pass when the server batches concurrent requests.")] = S.max_batch,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Most characters per text; longer ones get 413.")] = S.max_chars,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Most texts waiting for the model; beyond it requests get 503 with Retry-After.")] = S.max_queue,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="How long the oldest queued request waits, from its arrival, for others to share its forward pass when the queue is short.")] = S.max_wait_ms,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="Name of an environment variable holding the API key; /v1/* then needs 'Authorization: Bearer KEY'.")] = S.api_key_env,
    workers: Annotated[int, typer.Option("--workers", help="Server processes, each with its own copy of the model.")] = S.workers,
    threads: Annotated[int | None, typer.Option("--threads", help="Inference threads per worker. Default: the cores divided among the workers.")] = S.threads,
    long_text: LongTextOpt = S.long_text,
    precision: InferPrecisionOpt = S.precision,
    device: DeviceOpt = S.device,
    metrics_labels: Annotated[bool, typer.Option("--metrics-labels", help="Also count the predicted labels on /metrics (off by default: /metrics is open, and with this it carries how often each label is predicted).")] = S.metrics_labels,
) -> None:
    """Serve a run over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, /metrics, and a page at /."""

    def run() -> None:
        from medclf.serving.app import serve as serve_fn
        from medclf.serving.settings import ServeSettings

        settings = ServeSettings(
            run_dir=run_dir, host=host, port=port, backend=backend, max_batch=max_batch, max_chars=max_chars,
            max_queue=max_queue, max_wait_ms=max_wait_ms, api_key_env=api_key_env, workers=workers, threads=threads,
            long_text=long_text, precision=precision, device=device, metrics_labels=metrics_labels,
        )
        serve_fn(settings)

    guard(run)
