"""Load test of `medclf serve` on loopback, at several client counts: bounded, seeded, stops by itself.

python benchmarks/serving/serve_load.py --run RUN_DIR [--texts SPLIT/test.csv] [--backend auto] [--precision auto] \
    [--threads N] [--clients 1,8,32] [--seconds 300] [--requests N] [--texts-per-request 1-4] [--out bench-out/serve-load]

1. Offline reference: in a separate process, `TextClassifier.load(RUN, backend, precision, threads)` classifies the
   text pool once (warm-up first); texts/s, before the server starts and again after it stops (their mean is the
   reference: on a shared VM the machine's speed drifts, and the CPU the hypervisor stole is recorded with each
   figure). The server gets the same backend, precision and threads.
2. Starts `medclf serve RUN --port FREE` (127.0.0.1 only), waits for /readyz, warms up, reads the server's RSS.
3. For each client count in --clients, one phase: that many concurrent keep-alive clients (asyncio + httpx, one
   connection each) send requests back to back for --seconds (or until --requests are sent): 5% malformed (bad
   JSON, wrong types, empty list, too many texts, a text over --max-chars, missing or unknown fields), the rest
   carrying a uniform 1-4 (--texts-per-request) texts drawn from the pool. Per phase: requests/s, texts/s,
   p50/p95/p99 latency of the well-formed requests, status counts, texts per forward pass (from /metrics), and
   how much of the time the model was running and how fast it ran while it did (from /metrics: texts per
   model-second beside texts/s tells time lost between forward passes from time lost inside them), and the CPU
   seconds the server and the load client used (the client shares the machine's cores with the server).
4. Reads the server's RSS again, sends SIGTERM, waits for it to exit.
Targets: zero 5xx for well-formed requests, every malformed one 4xx, server texts/s at 8 clients (else at the
largest count) >= 80% of offline, RSS after within 10% of before. Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import cpu_flags_line, write_result  # noqa: E402

MALFORMED = ("bad-json", "text-not-string", "texts-not-list", "empty-list", "too-many-texts", "text-too-long",
             "missing-field", "unknown-field")
TARGET_CLIENTS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stolen_seconds() -> float:
    """CPU seconds the hypervisor gave to other guests so far, over all cores (the 'steal' column of /proc/stat): on
    a shared VM a phase that lost CPU this way is slower for a reason that is not the server's."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_pool(path: str | None) -> list[str]:
    import pandas as pd

    if path is None:
        from medclf.core.tables import demo_data_path

        path = str(demo_data_path())
    frame = pd.read_csv(path, keep_default_na=False)
    column = "text" if "text" in frame.columns else frame.columns[0]
    return [t for t in frame[column].astype(str).tolist() if t.strip()]


def offline_texts_per_s(run: str, *, backend: str, precision: str, threads: int, pool_file: Path) -> dict[str, Any]:
    """Classify the pool in a fresh process (so it does not share the CPU with anything), as the server would."""
    code = textwrap.dedent(f"""
        import json, time
        import torch
        torch.set_num_threads({threads})  # as `medclf serve --threads` sets it
        from medclf.config import LoadOptions
        from medclf.inference.classifier import TextClassifier
        texts = json.load(open({str(pool_file)!r}))
        clf = TextClassifier.load({run!r}, LoadOptions(backend={backend!r}, precision={precision!r}, threads={threads}))
        clf.predict_proba(texts[:16])
        t0 = time.perf_counter(); clf.predict_proba(texts); s = time.perf_counter() - t0
        print(json.dumps({{"backend": clf.backend, "precision": clf.precision.name, "threads": {threads}, "texts": len(texts),
                           "seconds": s, "texts_per_s": len(texts) / s}}))
    """)
    stolen = stolen_seconds()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {**result, "stolen_cpu_s_per_s": (stolen_seconds() - stolen) / result["seconds"]}


def parse_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    lo, hi = int(low), int(high or low)
    if not 1 <= lo <= hi:
        raise SystemExit(f"--texts-per-request must be LOW-HIGH with 1 <= LOW <= HIGH, not {text!r}")
    return lo, hi


class Requests:
    """The seeded stream of (kind, JSON body, number of texts) that a phase's clients draw from, in sending order."""

    def __init__(self, pool: list[str], *, malformed_share: float, texts_per_request: tuple[int, int], max_batch: int,
                 max_chars: int, seed: int, limit: int | None) -> None:
        self.pool, self.malformed_share, self.texts_per_request = pool, malformed_share, texts_per_request
        self.max_batch, self.max_chars, self.limit = max_batch, max_chars, limit
        self.rng = random.Random(seed)
        self.sent = 0

    def __iter__(self) -> Requests:
        return self

    def __next__(self) -> tuple[str, bytes, int]:
        if self.limit is not None and self.sent >= self.limit:
            raise StopIteration
        self.sent += 1
        rng = self.rng
        if rng.random() < self.malformed_share:
            kind = rng.choice(MALFORMED)
            body: Any = {
                "bad-json": None, "text-not-string": {"text": 42}, "texts-not-list": {"texts": rng.choice(self.pool)},
                "empty-list": {"texts": []}, "too-many-texts": {"texts": ["chest pain"] * (self.max_batch + 1)},
                "text-too-long": {"text": "x" * (self.max_chars + 1)}, "missing-field": {"top_k": 2},
                "unknown-field": {"text": "chest pain", "patient": "x"},
            }[kind]
            return kind, b'{"texts": ["unterminated' if body is None else json.dumps(body).encode(), 0
        n = rng.randint(*self.texts_per_request)
        if n == 1:
            return "single", json.dumps({"text": rng.choice(self.pool)}).encode(), 1
        return "multi", json.dumps({"texts": [rng.choice(self.pool) for _ in range(n)]}).encode(), n


async def send_all(base: str, requests: Any, clients: int, deadline: float) -> list[dict[str, Any]]:
    """`clients` keep-alive connections, each sending its next request as soon as the last one is answered."""
    import httpx

    results: list[dict[str, Any]] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        for kind, body, n_texts in requests:
            t0 = time.perf_counter()
            try:
                response = await client.post(base + "/v1/predict", content=body, headers={"content-type": "application/json"})
                status = response.status_code
            except httpx.HTTPError as exc:
                status = f"error:{type(exc).__name__}"
            results.append({"kind": kind, "status": status, "seconds": time.perf_counter() - t0, "texts": n_texts})
            if time.monotonic() > deadline:
                return

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return results


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def run_phase(base: str, pid: int, requests: Requests, clients: int, seconds: float) -> dict[str, Any]:
    """One load phase against the running server, and what it showed."""
    import httpx

    before = httpx.get(base + "/metrics", timeout=10).text
    server_cpu, client_cpu, stolen = cpu_seconds(pid), own_cpu_seconds(), stolen_seconds()
    started = time.perf_counter()
    results = asyncio.run(send_all(base, requests, clients, time.monotonic() + seconds))
    wall = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, own_cpu_seconds() - client_cpu
    stolen = stolen_seconds() - stolen
    after = httpx.get(base + "/metrics", timeout=10).text
    batches = metric_value(after, "medclf_batch_texts_count") - metric_value(before, "medclf_batch_texts_count")
    batch_texts = metric_value(after, "medclf_batch_texts_sum") - metric_value(before, "medclf_batch_texts_sum")
    model_s = metric_value(after, "medclf_inference_seconds_sum") - metric_value(before, "medclf_inference_seconds_sum")

    good = [r for r in results if r["kind"] in ("single", "multi")]
    bad = [r for r in results if r["kind"] not in ("single", "multi")]
    ok_texts = sum(r["texts"] for r in good if r["status"] == 200)
    latencies = [r["seconds"] for r in good if r["status"] == 200]
    server_tps = ok_texts / wall
    return {
        "clients": clients, "requests_sent": len(results), "wall_s": wall, "requests_per_s": len(results) / wall,
        "texts": ok_texts, "texts_per_s": server_tps,
        "latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "p99": percentile(latencies, 99)},
        "status_counts": dict(Counter(str(r["status"]) for r in results)),
        "malformed_by_kind": dict(Counter(f"{r['kind']}:{r['status']}" for r in bad)),
        "wellformed": len(good), "wellformed_not_answered_below_500":
            sum(1 for r in good if not (isinstance(r["status"], int) and r["status"] < 500)),
        "malformed": len(bad),
        "malformed_not_4xx": sum(1 for r in bad if not (isinstance(r["status"], int) and 400 <= r["status"] < 500)),
        "mean_texts_per_forward_batch": batch_texts / batches if batches else None,
        "model_busy_share": model_s / wall, "texts_per_model_second": batch_texts / model_s if model_s else None,
        "server_cpu_s_per_s": server_cpu / wall, "client_cpu_s_per_s": client_cpu / wall,
        "stolen_cpu_s_per_s": stolen / wall,
    }


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def render(result: dict[str, Any]) -> list[str]:
    offline = result["offline"]
    lines = [
        f"Offline `TextClassifier`: {offline['texts_per_s']:.1f} texts/s, the mean of {offline['before']['texts_per_s']:.1f} "
        f"before the server started and {offline['after']['texts_per_s']:.1f} after it stopped (stolen CPU "
        f"{offline['before']['stolen_cpu_s_per_s']:.2f} and {offline['after']['stolen_cpu_s_per_s']:.2f} s/s; "
        f"{offline['backend']}, {offline['precision']}, {offline['threads']} threads); the server ran with the same. "
        f"Requests carry {result['texts_per_request']} texts"
        f" ({result['malformed_share']:.0%} malformed), {result['seconds_per_phase']:.0f} s per client count. "
        f"CPU: {result['cpu_flags']}.", "",
        "| clients | requests | req/s | texts/s | server/offline | p50 s | p95 s | p99 s | texts per forward pass "
        "| model busy | texts per model-second | server CPU s/s | load client CPU s/s | stolen CPU s/s "
        "| 5xx (well-formed) | malformed not 4xx |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["phases"]:
        lat = p["latency_s"]
        batch = p["mean_texts_per_forward_batch"]
        lines.append(
            f"| {p['clients']} | {p['requests_sent']} | {p['requests_per_s']:.1f} | {p['texts_per_s']:.1f} "
            f"| {p['server_vs_offline']:.2f} | {lat['p50']:.3f} | {lat['p95']:.3f} | {lat['p99']:.3f} "
            f"| {'' if batch is None else f'{batch:.1f}'} | {p['model_busy_share']:.0%} "
            f"| {_fmt(p['texts_per_model_second'])} | {p['server_cpu_s_per_s']:.2f} | {p['client_cpu_s_per_s']:.2f} "
            f"| {p['stolen_cpu_s_per_s']:.2f} | {p['wellformed_not_answered_below_500']} | {p['malformed_not_4xx']} |")
    rss = result["rss_mib"]
    lines += ["", f"Server RSS {rss['before']:.0f} -> {rss['after']:.0f} MiB over all phases.",
              "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in result["targets"].items())]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--texts", default=None, help="CSV whose 'text' column is the pool (default: the demo notes)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="inference threads, offline and served")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts, one phase each")
    parser.add_argument("--seconds", type=float, default=300, help="how long each phase sends")
    parser.add_argument("--requests", type=int, default=None, help="at most this many requests per phase")
    parser.add_argument("--texts-per-request", default="1-4", help="LOW-HIGH: each request carries a uniform count")
    parser.add_argument("--malformed-share", type=float, default=0.05)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-chars", type=int, default=20_000)
    parser.add_argument("--max-wait-ms", type=float, default=None, help="the server's --max-wait-ms (default: its own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/serve-load")
    args = parser.parse_args(argv)
    client_counts = [int(c) for c in args.clients.split(",")]
    texts_per_request = parse_range(args.texts_per_request)

    import httpx

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = read_pool(args.texts)
    pool_file = out / "pool.json"
    pool_file.write_text(json.dumps(pool), encoding="utf-8")

    def offline_figure() -> dict[str, Any]:
        found = offline_texts_per_s(args.run, backend=args.backend, precision=args.precision, threads=args.threads,
                                    pool_file=pool_file)
        print(f"offline: {found['texts_per_s']:.1f} texts/s ({found['backend']}, {found['precision']})", flush=True)
        return found

    offline_before = offline_figure()

    def stream(seed: int, limit: int | None) -> Requests:
        return Requests(pool, malformed_share=args.malformed_share, texts_per_request=texts_per_request,
                        max_batch=args.max_batch, max_chars=args.max_chars, seed=seed, limit=limit)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = out / "server.log"
    command = [sys.executable, "-m", "medclf", "serve", args.run, "--port", str(port), "--backend", args.backend,
               "--precision", args.precision, "--threads", str(args.threads), "--max-batch", str(args.max_batch),
               "--max-chars", str(args.max_chars)]
    if args.max_wait_ms is not None:
        command += ["--max-wait-ms", str(args.max_wait_ms)]
    phases = []
    with open(log_path, "w") as server_log:
        proc = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start; see {log_path}")
                try:
                    if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            asyncio.run(send_all(base, stream(args.seed + 10_000, 32), max(client_counts), time.monotonic() + 300))
            rss_before = rss_mib(proc.pid)
            for i, clients in enumerate(client_counts):
                phase = run_phase(base, proc.pid, stream(args.seed + i, args.requests), clients, args.seconds)
                print(f"{clients} clients: {phase['texts_per_s']:.1f} texts/s, p99 {phase['latency_s']['p99']:.3f} s",
                      flush=True)
                phases.append(phase)
            rss_after = rss_mib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    offline_after = offline_figure()  # the machine may have changed speed meanwhile (a shared VM): both, and their mean
    pool_file.unlink()
    offline = {**offline_before, "texts_per_s": (offline_before["texts_per_s"] + offline_after["texts_per_s"]) / 2,
               "before": offline_before, "after": offline_after}
    for phase in phases:
        phase["server_vs_offline"] = phase["texts_per_s"] / offline["texts_per_s"]

    target = next((p for p in phases if p["clients"] == TARGET_CLIENTS), phases[-1])
    result = {
        "run": args.run, "offline": offline, "texts_per_request": args.texts_per_request,
        "malformed_share": args.malformed_share, "seconds_per_phase": args.seconds, "requests_per_phase": args.requests,
        "phases": phases, "rss_mib": {"before": rss_before, "after": rss_after, "ratio": rss_after / rss_before},
        "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags_line(), "server_command": command[1:],
    }
    result["targets"] = {
        "zero 5xx for well-formed requests": all(p["wellformed_not_answered_below_500"] == 0 for p in phases),
        "every malformed request answered 4xx": all(p["malformed_not_4xx"] == 0 for p in phases),
        f"server texts/s at {target['clients']} clients >= 80% of offline": target["server_vs_offline"] >= 0.8,
        "RSS after within 10% of before": abs(result["rss_mib"]["ratio"] - 1) <= 0.10,
    }
    lines = render(result)
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    write_result(out / "results.json", result)


if __name__ == "__main__":
    main()
