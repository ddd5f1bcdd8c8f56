"""`medclf serve`: every endpoint and every bad input through FastAPI's TestClient, the micro-batcher,
and a real server process that answers and shuts down cleanly on SIGTERM."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import SECRET, free_port, wait_ready
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from medclf.cli.main import app as cli_app
from medclf.errors import MedclfError
from medclf.inference.classifier import TextClassifier
from medclf.serving.app import create_app
from medclf.serving.batcher import MicroBatcher, Overloaded
from medclf.serving.settings import ServeSettings

NOTE = f"patient {SECRET} crushing chest pain troponin ecg"
KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def client(trained_run):
    with TestClient(create_app(ServeSettings(run_dir=str(trained_run), max_batch=8, max_chars=200))) as c:
        yield c


@pytest.fixture(scope="module")
def reference(trained_run):
    return TextClassifier.load(trained_run, backend="torch")


def assert_no_text(response):
    assert SECRET not in response.text, "the response echoes the request's text"


def test_health_ready_and_model_info(client, trained_run):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    assert info["labels"] == ["cardio", "derm", "neuro"] and info["backend"] == "torch"
    metrics = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert info["test_metrics"]["macro_f1"] == metrics["macro_f1"] and info["test_metrics"]["n"] == metrics["n"]
    assert info["limits"] == {"max_batch": 8, "max_chars": 200} and info["medclf_version"]
    card = info["card"]  # the model card's key facts, for the page
    band = metrics["intervals"]["macro_f1"]
    assert card["macro_f1_interval"] == {"low": band["low"], "high": band["high"]}
    assert "not a medical device" in card["out_of_scope"] and card["data"].startswith("notes.csv (")
    assert card["method"].startswith("fine-tuning")


def test_predict_one_text_and_a_list_match_the_library(client, reference):
    texts = [NOTE, "itchy rash plaques on skin", "seizure and tremor on mri"]
    one = client.post("/v1/predict", json={"text": texts[0]})
    assert one.status_code == 200
    assert_no_text(one)
    body = one.json()
    expected = reference.predict_proba(texts)
    assert body["label"] == reference.labels[int(expected[0].argmax())]
    assert set(body["probabilities"]) == set(reference.labels)
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
    assert np.allclose([body["probabilities"][lab] for lab in reference.labels], expected[0], atol=1e-5)
    many = client.post("/v1/predict", json={"texts": texts}).json()["predictions"]
    assert [p["label"] for p in many] == reference.predict(texts)
    top = client.post("/v1/predict", json={"texts": texts, "top_k": 2}).json()["predictions"]
    assert all(len(p["top_k"]) == 2 and p["top_k"][0]["label"] == p["label"] for p in top)
    assert top[0]["top_k"][0]["probability"] >= top[0]["top_k"][1]["probability"]
    assert len(client.post("/v1/predict", json={"text": NOTE, "top_k": 50}).json()["top_k"]) == 3


@pytest.mark.parametrize("body, status, fragment", [
    ({"texts": []}, 422, "'texts' is empty; send 1 to 8 texts"),
    ({"texts": ["chest pain"] * 9}, 413, "the limit is 8"),
    ({"text": "x" * 201}, 413, "the limit is 200"),
    ({"texts": ["ok", "y" * 201]}, 413, "the limit is 200"),
    ({"texts": ["ok", "   "]}, 422, "empty"),
    ({}, 422, "either 'text'"),
    ({"text": "a", "texts": ["b"]}, 422, "either 'text'"),
    ({"text": 5}, 422, "string"),
    ({"texts": "chest pain"}, 422, "list"),
    ({"texts": ["ok", 3]}, 422, "string"),
    ({"text": "ok", "top_k": 0}, 422, "greater than or equal to 1"),
    ({"text": "ok", "top_k": "2"}, 422, "integer"),
    ({"text": "ok", "colour": "red"}, 422, "Extra inputs"),
])
def test_bad_bodies_get_a_4xx_that_names_the_field_and_limit(client, body, status, fragment):
    response = client.post("/v1/predict", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"][0] == "body"


def test_bad_input_is_never_echoed(client):
    secret_bodies = [{"text": [SECRET]}, {"texts": [SECRET, 3]}, {"text": SECRET * 50}, {"text": SECRET, "x": SECRET}]
    for body in secret_bodies:
        response = client.post("/v1/predict", json=body)
        assert 400 <= response.status_code < 500
        assert_no_text(response)
    response = client.post("/v1/predict", content=b'{"text": "' + SECRET.encode() + b'"', headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"
    assert_no_text(response)


def test_malformed_requests(client):
    assert client.post("/v1/predict", content=b"not json", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/v1/predict", content=b"[1, 2]", headers={"content-type": "application/json"}).status_code == 422
    assert client.get("/v1/predict").status_code == 405
    assert client.get("/nowhere").status_code == 404
    too_big = client.post("/v1/predict", content=b"x", headers={"content-type": "application/json", "content-length": "99999999"})
    assert too_big.status_code == 413 and "at most 8 texts" in too_big.text


def test_metrics_count_requests_latency_and_batches(client):
    client.post("/v1/predict", json={"texts": ["chest pain", "rash"]})
    client.post("/v1/predict", json={"texts": []})
    text = client.get("/metrics").text
    assert 'medclf_requests_total{endpoint="/v1/predict",method="POST",status="200"}' in text
    assert 'medclf_requests_total{endpoint="/v1/predict",method="POST",status="422"}' in text
    assert 'medclf_request_duration_seconds_bucket{endpoint="/v1/predict",le="+Inf"}' in text
    assert "medclf_batch_texts_count" in text and "medclf_texts_total" in text and "medclf_queue_texts 0.0" in text
    texts_total = float(next(line.split()[1] for line in text.splitlines() if line.startswith("medclf_texts_total")))
    assert texts_total >= 2
    assert SECRET not in text


def test_page_is_served_from_the_package_with_a_strict_policy(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "<textarea" in response.text and "/v1/predict" in response.text
    assert "http://" not in response.text and "https://" not in response.text  # no CDN, nothing from elsewhere
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_api_key_is_required_when_configured(trained_run, monkeypatch):
    monkeypatch.setenv("MEDCLF_TEST_KEY", KEY)
    settings = ServeSettings(run_dir=str(trained_run), api_key_env="MEDCLF_TEST_KEY")
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/predict", json={"text": "chest pain"}).status_code == 401
        assert c.post("/v1/predict", json={"text": "chest pain"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/model").status_code == 401
        ok = c.post("/v1/predict", json={"text": "chest pain"}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        assert c.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open


def test_a_key_variable_that_is_not_set_is_a_user_error(trained_run, monkeypatch):
    monkeypatch.delenv("MEDCLF_UNSET_KEY", raising=False)
    with pytest.raises(MedclfError, match="not set"):
        create_app(ServeSettings(run_dir=str(trained_run), api_key_env="MEDCLF_UNSET_KEY"))


@pytest.mark.parametrize("kwargs, fragment", [
    ({"max_batch": 0}, "--max-batch must be an integer of at least 1"),
    ({"port": 70000}, "--port must be at most 65535"),
    ({"backend": "gpu"}, "--backend must be one of"),
    ({"max_queue": 4, "max_batch": 8}, "--max-queue (4) must be at least --max-batch (8)"),
    ({"max_wait_ms": -1}, "--max-wait-ms"),
])
def test_settings_are_validated_where_they_enter(kwargs, fragment):
    with pytest.raises(MedclfError) as err:
        ServeSettings(run_dir="x", **kwargs)
    assert fragment in str(err.value)


def test_settings_round_trip_through_json():
    settings = ServeSettings(run_dir="runs/x", port=9000, max_batch=32, api_key_env="K")
    assert ServeSettings.from_json(settings.to_json()) == settings


# ---------------------------------------------------------------- the batcher


def test_concurrent_requests_share_forward_passes_and_get_their_own_results():
    calls = []

    def infer(texts):
        calls.append(len(texts))
        time.sleep(0.02)
        return np.array([[float(len(t)), 0.0] for t in texts])

    async def scenario():
        batcher = MicroBatcher(infer, max_batch=16, max_wait_s=0.01, max_queue=64)
        batcher.start()
        requests = [["a" * (i + 1)] if i % 2 else ["b" * (i + 1)] * 3 for i in range(12)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.close()
        return requests, results

    requests, results = asyncio.run(scenario())
    for req, res in zip(requests, results):
        assert res.shape == (len(req), 2) and [r[0] for r in res] == [len(t) for t in req]
    assert sum(calls) == sum(len(r) for r in requests)
    assert len(calls) < len(requests) and max(calls) <= 16  # batched together, never over max_batch


def test_a_lone_request_waits_for_company_but_a_queue_under_load_goes_straight_to_the_model():
    passes = []  # (start, end, texts) of each forward pass, on the event loop's clock

    async def scenario():
        loop = asyncio.get_running_loop()

        def infer(texts):
            start = loop.time()
            time.sleep(0.6)
            passes.append((start, loop.time(), len(texts)))
            return np.zeros((len(texts), 2))

        batcher = MicroBatcher(infer, max_batch=16, max_wait_s=0.2, max_queue=64)
        batcher.start()
        t0 = loop.time()
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.3)  # the first pass is running; this one queues behind it and waits longer than 0.2 s
        second = asyncio.ensure_future(batcher.submit(["b", "c"]))
        await asyncio.gather(first, second)
        await batcher.close()
        return t0

    t0 = asyncio.run(scenario())
    (start1, end1, n1), (start2, _, n2) = passes
    assert (n1, n2) == (1, 2)
    assert 0.15 <= start1 - t0 < 0.3  # alone: it waited max_wait for others to join
    assert start2 - end1 < 0.1  # queued for longer than max_wait already: no second wait


def test_a_full_queue_refuses_instead_of_growing():
    release = threading.Event()

    def infer(texts):
        release.wait(5)
        return np.zeros((len(texts), 2))

    async def scenario():
        batcher = MicroBatcher(infer, max_batch=4, max_wait_s=0, max_queue=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(["x"] * 4))
        await asyncio.sleep(0.05)  # the first batch is in the model now
        queued = [asyncio.ensure_future(batcher.submit(["y"] * 4)) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await batcher.submit(["z"])
        release.set()
        done = await asyncio.gather(first, *queued)
        await batcher.close()
        return done, batcher.rejected

    done, rejected = asyncio.run(scenario())
    assert [d.shape for d in done] == [(4, 2)] * 3 and rejected == 1


def test_overload_is_a_503_with_retry_after(trained_run, monkeypatch):
    settings = ServeSettings(run_dir=str(trained_run), max_batch=2, max_queue=2)
    with TestClient(create_app(settings)) as c:
        async def full(self, texts):
            raise Overloaded

        monkeypatch.setattr(MicroBatcher, "submit", full)
        response = c.post("/v1/predict", json={"text": "chest pain"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "capacity" in response.json()["detail"]


def test_an_inference_failure_is_a_500_without_text(trained_run, caplog):
    def broken(texts):
        raise RuntimeError(SECRET)

    with TestClient(create_app(ServeSettings(run_dir=str(trained_run))), raise_server_exceptions=False) as c:
        c.app.state.medclf.batcher.infer = broken
        response = c.post("/v1/predict", json={"text": NOTE})
        assert c.post("/v1/predict", json={"texts": []}).status_code == 422  # the server goes on
    assert response.status_code == 500 and "RuntimeError" in response.text
    assert_no_text(response)
    assert SECRET not in caplog.text


# ---------------------------------------------------------------- the CLI and a real server


def test_serve_cli_refuses_bad_setups_with_one_sentence(trained_run, tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.delenv("MEDCLF_UNSET_KEY", raising=False)
    for args, fragment in [
        ([str(tmp_path)], "not a medclf run directory"),
        ([str(trained_run), "--backend", "onnx"], "medclf export"),
        ([str(trained_run), "--api-key-env", "MEDCLF_UNSET_KEY"], "not set"),
        ([str(trained_run), "--max-batch", "0"], "--max-batch"),
    ]:
        result = runner.invoke(cli_app, ["serve", *args])
        assert result.exit_code == 2 and fragment in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_open_host_without_a_key_warns(trained_run, monkeypatch, caplog):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    result = CliRunner().invoke(cli_app, ["serve", str(trained_run), "--host", "0.0.0.0", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert "without an API key" in result.stderr
    assert seen["host"] == "0.0.0.0" and seen["port"] == 8123
    result = CliRunner().invoke(cli_app, ["serve", str(trained_run)])
    assert "without an API key" not in result.stderr and seen["host"] == "127.0.0.1"


def test_a_real_server_answers_and_finishes_in_flight_requests_on_sigterm(trained_run):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # --max-wait-ms 800: a request waits that long in the batcher, so SIGTERM lands while it is in flight
    proc = subprocess.Popen([sys.executable, "-m", "medclf", "serve", str(trained_run), "--port", str(port),
                             "--max-wait-ms", "800"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_ready(base, proc)
        quick = httpx.post(base + "/v1/predict", json={"text": NOTE}, timeout=10)
        assert quick.status_code == 200 and quick.json()["label"] in ("cardio", "derm", "neuro")
        result = {}
        thread = threading.Thread(target=lambda: result.update(
            r=httpx.post(base + "/v1/predict", json={"texts": [NOTE, "rash"]}, timeout=30)))
        thread.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        thread.join(30)
        assert result["r"].status_code == 200 and len(result["r"].json()["predictions"]) == 2
        # uvicorn finishes the shutdown, then re-raises SIGTERM so a supervisor sees why it stopped
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = proc.stdout.read() + proc.stderr.read()
    assert SECRET not in logs, "the server logged request text"
    assert "Finished server process" in logs


def test_several_workers_each_load_the_model_and_answer(trained_run):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "medclf", "serve", str(trained_run), "--port", str(port), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(base, proc, timeout=90)
        answers = [httpx.post(base + "/v1/predict", json={"text": NOTE}, timeout=30) for _ in range(4)]
        assert all(a.status_code == 200 for a in answers)
        assert len({a.json()["label"] for a in answers}) == 1
        # /metrics counts the whole server, whichever worker answers the scrape (prometheus_client multiprocess mode)
        line = 'medclf_requests_total{endpoint="/v1/predict",method="POST",status="200"}'
        for _ in range(6):
            scrape = httpx.get(base + "/metrics", timeout=10).text
            assert float(next(x for x in scrape.splitlines() if x.startswith(line)).split()[1]) == 4.0
            assert float(next(x for x in scrape.splitlines() if x.startswith("medclf_texts_total")).split()[1]) >= 4.0
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = proc.stdout.read() + proc.stderr.read()
    assert logs.count("Serving ") == 2, logs[-2000:]  # one model per worker process
    assert SECRET not in logs
