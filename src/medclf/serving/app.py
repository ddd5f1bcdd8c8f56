"""`medclf serve`: a trained classifier behind a local HTTP API (FastAPI, uvicorn).

- `create_app(settings)` builds the app; the model is loaded once, in the lifespan.
- Requests are batched together on the server: each request's texts join a queue, and one worker
  thread runs the model on up to `max_batch` queued texts at a time (waiting `max_wait_ms` for company
  when the queue is short), so the event loop never runs the model and concurrent requests share
  forward passes. The queue is bounded (`max_queue` texts): beyond it the answer is 503 with
  Retry-After, never an unbounded backlog.
- Bad input gets a 4xx that names the field and the limit; texts are never logged or echoed, not in
  errors either (FastAPI's default 422 body repeats the input: it is replaced here).
- Binds to 127.0.0.1 by default; an API key (read from the environment variable named by
  `api_key_env`) guards /v1/*. /healthz, /readyz, /metrics and the page at / carry no text or result.
"""

import asyncio
import functools
import hmac
import importlib.resources
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from medclf.errors import MedclfError
from medclf.model.batching import unpaired_surrogate
from medclf.serving.batcher import MicroBatcher, Overloaded
from medclf.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from medclf.serving.metrics import MULTIPROC_ENV, Metrics
from medclf.serving.settings import LOOPBACK, SETTINGS_ENV, ServeSettings

if TYPE_CHECKING:  # the classifier (and torch) load in the app's lifespan
    from medclf.inference.classifier import Predictions, TextClassifier

log = logging.getLogger(__name__)

SURROGATE_MESSAGE = ("The text holds an unpaired surrogate code point (\\ud800-\\udfff), which is not valid Unicode; "
                     "encode the text correctly.")
DRAIN_LIMIT = 256 * 2**20
# The request line and headers together, whether they arrive in one piece or several (h11's own default, 16 KiB,
# refused a 60 kB header only when the kernel delivered it in pieces, and then closed before the client read the 400).
HEADER_LIMIT = 64 * 2**10
"""A refused body is read on and thrown away, up to this many bytes past the limit, so that a client that sends it
whole still reads the 413 (closing at once would reset the connection under its feet); a body longer than that (or a
Content-Length that says so) gets the 413 at once and the connection is closed."""


class BodyLimit:
    """ASGI middleware that bounds what a request body may cost. A Content-Length over `limit` is refused (413) before
    the body is read; a body without one (chunked transfer) is kept only up to `limit` bytes and refused as soon as it
    passes it, the rest read and discarded. Memory per request stays at most `limit`, whatever the client sends."""

    def __init__(self, app: Any, *, limit: int, message: str) -> None:
        self.app, self.limit, self.message = app, limit, message

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                if length.isdigit() and int(length) <= self.limit + DRAIN_LIMIT:
                    await self._drain(receive, {"more_body": True})
                await self._refuse(send)
                return
            await self.app(scope, receive, send)  # the server itself reads no more than Content-Length
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._drain(receive, message)
                await self._refuse(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _drain(receive: Callable, message: dict[str, Any]) -> None:
        """Read the rest of a refused body, keeping none of it, up to DRAIN_LIMIT bytes."""
        drained = 0
        while message.get("more_body") and drained <= DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))

    async def _refuse(self, send: Callable) -> None:
        body = json.dumps({"detail": self.message}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})


@functools.lru_cache(maxsize=1)
def page_html() -> str:
    return importlib.resources.files("medclf").joinpath("static/index.html").read_text(encoding="utf-8")


@dataclass
class Served:
    """What one app serves: its settings and metrics, and once started, the classifier and its batcher. Kept on
    `app.state.medclf` (routes read it from the request; tests and embedding applications may too)."""

    settings: ServeSettings
    metrics: Metrics
    api_key: str | None
    ready: bool = False
    clf: "TextClassifier | None" = None
    info: dict[str, Any] | None = None
    batcher: MicroBatcher | None = None
    explain_lock: asyncio.Lock | None = None
    """One explanation at a time: each is dozens of forward and backward passes."""


async def _served(request: Request) -> Served:
    # async, as every dependency here: FastAPI runs a plain `def` dependency in its thread pool, two thread
    # hand-offs per request that contend for the GIL with the model's thread
    return request.app.state.medclf


def _error(status: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _field_error(status: int, loc: list[str | int], msg: str, kind: str) -> JSONResponse:
    return _error(status, [{"loc": ["body", *loc], "msg": msg, "type": kind}])


async def _authorize(request: Request, served: Served = Depends(_served)) -> None:
    api_key = served.api_key
    if api_key is None:
        return
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = given or auth[7:].strip()
    if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
        raise HTTPException(401, "Missing or wrong API key; send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'.",
                            headers={"WWW-Authenticate": "Bearer"})


def _text_problem(text: str, loc: list[str | int], settings: ServeSettings) -> JSONResponse | None:
    """A 413 or 422 for a text the model must not get (too long, empty, not valid Unicode), else None."""
    if len(text) > settings.max_chars:
        return _field_error(413, loc, f"The text has {len(text)} characters; the limit is {settings.max_chars}.",
                            "too_long")
    if not text.strip():
        return _field_error(422, loc, "The text is empty.", "value_error")
    if unpaired_surrogate(text) is not None:
        return _field_error(422, loc, SURROGATE_MESSAGE, "unicode_error")
    return None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = Field(None, description="One text; the answer is one prediction.")
    texts: list[str] | None = Field(None, description="Several texts; the answer is a list of predictions in order.")
    top_k: int | None = Field(None, ge=1, description="Give only the K most probable classes per text.")
    sets: float | None = Field(None, gt=0, lt=1, description="Also give each text's conformal label set at this "
                               "coverage (0.9: the set holds the true label for at least 90% of texts drawn as the "
                               "run's calibration part was); single-label runs with a calibration part.")
    set_score: str = Field("lac", description="sets: lac (smallest sets) | aps (sets grow with how hard a text is).")
    set_by_class: bool = Field(False, description="sets: calibrated per class (every class keeps the coverage).")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(..., description="The text to explain.")
    method: str = Field("integrated-gradients", description="integrated-gradients | occlusion.")
    target: str | None = Field(None, description="The label to explain; default: the predicted one.")
    steps: int = Field(32, ge=2, le=256, description="integrated-gradients: interpolation steps.")


api = APIRouter(prefix="/v1", dependencies=[Depends(_authorize)])
"""The model's API: /v1/predict, /v1/explain, /v1/model (behind the API key when one is set)."""
probes = APIRouter()
"""What operators and browsers need, open and text-free: the page, /healthz, /readyz, /metrics."""
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@api.post("/predict")
async def predict(body: PredictRequest, served: Served = Depends(_served)) -> Any:
    from medclf.inference.files import prediction_records

    settings = served.settings
    if (body.text is None) == (body.texts is None):
        return _field_error(422, [], "Send either 'text' (one string) or 'texts' (a list of strings).", "value_error")
    single = body.text is not None
    texts: list[str] = [body.text] if body.text is not None else list(body.texts or [])
    if not texts:
        return _field_error(422, ["texts"], f"'texts' is empty; send 1 to {settings.max_batch} texts.", "too_short")
    if len(texts) > settings.max_batch:
        return _field_error(413, ["texts"], f"{len(texts)} texts in one request; the limit is {settings.max_batch}.",
                            "too_long")
    for i, text in enumerate(texts):
        problem = _text_problem(text, ["text"] if single else ["texts", i], settings)
        if problem is not None:
            return problem
    clf = served.clf
    assert clf is not None and served.batcher is not None  # _served answers 503 until the model is loaded
    request = None
    if body.sets is not None:
        from medclf.core.conformal import SetRequest

        try:
            request = SetRequest(coverage=body.sets, score=body.set_score, by_class=body.set_by_class)
            clf.conformal_sets()
        except MedclfError as error:  # no text in it: the run or the option is at fault
            return _field_error(422, ["sets"], str(error), "value_error")
    try:
        predictions = await served.batcher.submit(texts)
    except Overloaded:
        return _error(503, f"The server is at capacity ({settings.max_queue} texts queued); retry shortly.",
                      headers={"Retry-After": "1"})
    k = None if body.top_k is None else min(body.top_k, len(clf.labels))
    sets = None if request is None else clf.label_sets(predictions.probabilities, request)
    routed = None if clf.deferral is None else clf.route(predictions.probabilities)
    if routed is not None:
        served.metrics.deferred.inc(sum(r.deferred for r in routed))
    served.metrics.observe_predictions(clf.confidence(predictions.probabilities),
                                       [d if isinstance(d, list) else [d] for d in predictions.decided])
    records = prediction_records(clf.labels, predictions, k, sets, routed)
    return records[0] if single else {"predictions": records}


@api.post("/explain")
async def explain(body: ExplainRequest, served: Served = Depends(_served)) -> Any:
    """Per-word attribution scores for one text (the same JSON as `medclf explain`)."""
    from fastapi.concurrency import run_in_threadpool

    from medclf.inference.explain import METHODS, Explainer

    clf = served.clf
    assert clf is not None
    problem = _text_problem(body.text, ["text"], served.settings)
    if problem is not None:
        return problem
    if body.method not in METHODS:
        return _field_error(422, ["method"], f"'method' must be one of {', '.join(METHODS)}.", "value_error")
    if body.target is not None and body.target not in clf.labels:
        return _field_error(422, ["target"], f"'target' must be one of the model's labels: {', '.join(clf.labels)}.",
                            "value_error")
    assert served.explain_lock is not None
    async with served.explain_lock:
        found = await run_in_threadpool(Explainer(clf).explain, body.text, method=body.method, target=body.target,
                                        steps=body.steps)
    return found.to_dict()


@api.get("/model")
async def model_info(served: Served = Depends(_served)) -> dict[str, Any]:
    return served.info or {}


@probes.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(page_html(), headers={"Content-Security-Policy": PAGE_POLICY})


@probes.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get("/readyz")
async def readyz(served: Served = Depends(_served)) -> JSONResponse:
    if served.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready"}, status_code=503)


@probes.get("/metrics", response_class=PlainTextResponse)
async def prometheus(served: Served = Depends(_served)) -> Response:
    return Response(served.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def create_app(settings: ServeSettings) -> Any:
    """The FastAPI app for one run directory; the model loads when the app starts (lifespan)."""
    from medclf._version import __version__
    from medclf.inference.classifier import TextClassifier

    served = Served(settings=settings, metrics=Metrics(labels=settings.metrics_labels), api_key=settings.api_key())
    body_limit = settings.max_batch * settings.max_chars * 6 + 65_536  # JSON may escape a character as \uXXXX

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import torch

        torch.set_num_threads(settings.inference_threads())
        clf = TextClassifier.load(settings.run_dir, settings.load_options())
        clf.predict_proba(["warm-up"])  # first-call costs (allocations, kernel choice) before the first user
        served.clf, served.info = clf, _model_info(clf, settings, __version__)
        served.batcher = MicroBatcher(_trimming(clf.predictions), max_batch=settings.max_batch,
                                      max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.max_queue,
                                      metrics=served.metrics)
        served.batcher.start()
        served.explain_lock = asyncio.Lock()
        served.ready = True
        log.info("Serving %s (%s backend, %d labels).", settings.run_dir, clf.backend, len(clf.labels))
        try:
            yield
        finally:
            served.ready = False
            await served.batcher.close()

    app = FastAPI(title="medclf", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.medclf = served
    app.include_router(probes)
    app.include_router(api)
    too_large = (f"The request body is over {body_limit} bytes; send at most {settings.max_batch} texts "
                 f"of at most {settings.max_chars} characters each.")
    app.add_middleware(BodyLimit, limit=body_limit, message=too_large)  # inside `observe`, which counts its 413s

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        endpoint = getattr(request.scope.get("route"), "path", "unmatched")
        served.metrics.observe_request(endpoint, request.method, response.status_code, time.perf_counter() - started)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default body repeats the offending input (patient text): keep only where and what.
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid"), "type": e.get("type", "invalid")}
                   for e in exc.errors()]
        return _error(422, details)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("Unexpected %s while answering %s %s.", type(exc).__name__, request.method, request.url.path)
        return _error(500, f"Internal error ({type(exc).__name__}); see the server log.")

    return app


TRIM_EVERY = 4
"""Batches between glibc malloc_trim calls. Without them, PyTorch's freed activations for batches of
ever-different shapes stay in a fragmented heap: under benchmarks/serving/serve_load.py's load the torch
backend's RSS grew 775 -> 1171 MiB; ONNX Runtime's stayed flat (623 -> 625 MiB)."""


def _trimming(infer: Callable[[list[str]], "Predictions"]) -> Callable[[list[str]], "Predictions"]:
    from medclf.model.modeling import release_memory

    count = 0

    def run(texts: list[str]) -> "Predictions":
        nonlocal count
        try:
            return infer(texts)
        finally:
            count += 1
            if count % TRIM_EVERY == 0:
                release_memory()

    return run


def _reference_info(run: Path) -> dict[str, Any] | None:
    """What the run's drift reference says of the data it was trained on: its training class shares and the part it
    holds (no embedding, no text); None without one."""
    from medclf.run.reference import read_reference

    try:
        found = read_reference(run)
    except MedclfError as error:
        log.warning("The run's drift reference is not used: %s", error)
        return None
    if found is None:
        return None
    return {"part": found.info.part, "n": found.info.n, "train_shares": found.info.train_shares}


def _model_info(clf: "TextClassifier", settings: ServeSettings, version: str) -> dict[str, Any]:
    from medclf.run.artifacts import METRICS_FILE, read_json

    run = Path(settings.run_dir)
    spec = clf.spec
    from medclf.reporting.card import INTENDED_USE, OUT_OF_SCOPE, method_text

    test: dict[str, Any] = {}
    card: dict[str, Any] = {"intended_use": INTENDED_USE[0].upper() + INTENDED_USE[1:] + ".",
                            "out_of_scope": OUT_OF_SCOPE[0].upper() + OUT_OF_SCOPE[1:] + "."}
    if spec is not None:
        card["method"] = method_text(spec)
    if (run / METRICS_FILE).is_file():
        metrics = read_json(run / METRICS_FILE)
        keys = ("n", *clf.task.headline_keys, clf.task.auc_key)
        test = {k: metrics.get("test", {}).get(k) for k in keys}
        band = metrics.get("test", {}).get("intervals", {}).get("macro_f1")
        if band:
            card["macro_f1_interval"] = {"low": band["low"], "high": band["high"]}
        if spec is not None:
            card["data"] = f"{Path(spec.data_file).name} ({metrics.get('data', {}).get('n_train', '?')} training rows)"
    return {
        "model": spec.config.model if spec else None,
        "method": spec.method if spec else None,
        "labels": clf.labels,
        "multi_label": clf.multi_label,
        "thresholds": clf.thresholds,
        "deferral": clf.deferral,
        "reference": _reference_info(run),
        "backend": clf.backend,
        "max_length": clf.max_length,
        "trained": spec.created if spec else None,
        "test_metrics": test,
        "medclf_version": version,
        "limits": {"max_batch": settings.max_batch, "max_chars": settings.max_chars},
        "card": card,
    }


def app_from_env() -> Any:
    """uvicorn's factory for --workers > 1: each worker process builds its app from the settings in the environment.

    Worker processes are started afresh by uvicorn, so the CLI's logging setup is repeated here."""
    from medclf.logs import configure_logging

    configure_logging()
    return create_app(ServeSettings.from_json(os.environ[SETTINGS_ENV]))


def check(settings: ServeSettings) -> None:
    """Fail before binding a port: the run loads, the backend exists, the key is set."""
    from medclf.inference.onnx_runtime import onnx_file
    from medclf.run.artifacts import is_run_dir

    if not is_run_dir(settings.run_dir):
        raise MedclfError(f"{settings.run_dir} is not a medclf run directory; pass the --output of `medclf train`.")
    onnx_file(Path(settings.run_dir), settings.backend, "cpu")
    settings.api_key()


def serve(settings: ServeSettings) -> None:
    """Run the app under uvicorn until SIGINT/SIGTERM; requests in flight finish first."""
    import uvicorn

    check(settings)
    if settings.host not in LOOPBACK and settings.api_key_env is None:
        log.warning("Listening on %s without an API key: anyone who can reach this port can send texts. "
                    "Set --api-key-env, or keep the default host 127.0.0.1.", settings.host)
    common: dict[str, Any] = {"host": settings.host, "port": settings.port, "timeout_graceful_shutdown": settings.graceful_timeout_s,
              "server_header": False,
              "http": "h11", "h11_max_incomplete_event_size": HEADER_LIMIT}
    if settings.workers > 1:
        import shutil
        import tempfile

        os.environ[SETTINGS_ENV] = settings.to_json()
        # the workers' metrics go to files in a fresh folder that /metrics sums (prometheus_client multiprocess mode)
        shared = tempfile.mkdtemp(prefix="medclf-metrics-")
        os.environ[MULTIPROC_ENV] = shared
        try:
            uvicorn.run("medclf.serving.app:app_from_env", factory=True, workers=settings.workers, **common)
        finally:
            shutil.rmtree(shared, ignore_errors=True)
    else:
        uvicorn.run(create_app(settings), **common)
