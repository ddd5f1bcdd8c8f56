"""Load test of `medclf serve` on loopback: bounded, seeded, stops by itself.

python benchmarks/serving/serve_load.py --run RUN_DIR [--texts SPLIT/test.csv] [--backend auto] \
    [--requests 2000] [--clients 16] [--out bench-out/serve-load]

1. Offline reference: in a separate process, `TextClassifier.load(RUN, backend=...)` classifies the
   text pool once (warm-up first); texts/s.
2. Starts `medclf serve RUN --port FREE` (127.0.0.1 only), waits for /readyz, warms up with 32 requests,
   reads the server's RSS.
3. Sends --requests requests from --clients concurrent clients (asyncio + httpx): 5% malformed (bad
   JSON, wrong types, empty list, too many texts, a text over --max-chars, missing or unknown fields),
   the rest 70% one-text and 30% 16-text bodies, texts drawn from the pool. Stops issuing after
   --max-seconds.
4. Reads the server's RSS again and its /metrics, sends SIGTERM, waits for it to exit.
Reports requests/s, texts/s, p50/p95/p99 latency of the well-formed requests, status counts, the
targets (zero 5xx for well-formed, every malformed one 4xx, server texts/s >= 80% of offline, RSS
after within 10% of before), and writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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

from bench_common import write_result  # noqa: E402

MALFORMED = ("bad-json", "text-not-string", "texts-not-list", "empty-list", "too-many-texts", "text-too-long",
             "missing-field", "unknown-field")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def read_pool(path: str | None) -> list[str]:
    import pandas as pd

    if path is None:
        from medclf.core.tables import demo_data_path

        path = str(demo_data_path())
    frame = pd.read_csv(path, keep_default_na=False)
    column = "text" if "text" in frame.columns else frame.columns[0]
    return [t for t in frame[column].astype(str).tolist() if t.strip()]


def offline_texts_per_s(run: str, backend: str, pool_file: Path) -> dict[str, Any]:
    """Classify the pool in a fresh process (so it does not share the CPU with anything)."""
    code = textwrap.dedent(f"""
        import json, time
        from medclf.inference.classifier import TextClassifier
        texts = json.load(open({str(pool_file)!r}))
        clf = TextClassifier.load({run!r}, backend={backend!r})
        clf.predict_proba(texts[:16])
        t0 = time.perf_counter(); clf.predict_proba(texts); s = time.perf_counter() - t0
        print(json.dumps({{"backend": clf.backend, "texts": len(texts), "seconds": s, "texts_per_s": len(texts) / s}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plan_requests(pool: list[str], n: int, *, malformed_share: float, multi_share: float, multi_size: int,
                  max_batch: int, max_chars: int, seed: int) -> list[tuple[str, bytes, int]]:
    """(kind, JSON body, number of texts) for each request, in sending order."""
    rng = random.Random(seed)
    plan = []
    for _ in range(n):
        if rng.random() < malformed_share:
            kind = rng.choice(MALFORMED)
            body: Any = {
                "bad-json": None, "text-not-string": {"text": 42}, "texts-not-list": {"texts": rng.choice(pool)},
                "empty-list": {"texts": []}, "too-many-texts": {"texts": ["chest pain"] * (max_batch + 1)},
                "text-too-long": {"text": "x" * (max_chars + 1)}, "missing-field": {"top_k": 2},
                "unknown-field": {"text": "chest pain", "patient": "x"},
            }[kind]
            raw = b'{"texts": ["unterminated' if body is None else json.dumps(body).encode()
            plan.append((kind, raw, 0))
        elif rng.random() < multi_share:
            texts = [rng.choice(pool) for _ in range(multi_size)]
            plan.append(("multi", json.dumps({"texts": texts}).encode(), len(texts)))
        else:
            plan.append(("single", json.dumps({"text": rng.choice(pool)}).encode(), 1))
    return plan


async def send_all(base: str, plan: list[tuple[str, bytes, int]], clients: int, deadline: float) -> list[dict[str, Any]]:
    import httpx

    results: list[dict[str, Any]] = []
    queue = iter(plan)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for kind, body, n_texts in queue:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                response = await client.post(base + "/v1/predict", content=body, headers={"content-type": "application/json"})
                status = response.status_code
            except httpx.HTTPError as exc:
                status = f"error:{type(exc).__name__}"
            results.append({"kind": kind, "status": status, "seconds": time.perf_counter() - t0, "texts": n_texts})

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--texts", default=None, help="CSV whose 'text' column is the pool (default: the demo notes)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--malformed-share", type=float, default=0.05)
    parser.add_argument("--multi-share", type=float, default=0.3)
    parser.add_argument("--multi-size", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-chars", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=1200, help="stop sending after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/serve-load")
    args = parser.parse_args(argv)

    import httpx

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = read_pool(args.texts)
    pool_file = out / "pool.json"
    pool_file.write_text(json.dumps(pool), encoding="utf-8")
    offline = offline_texts_per_s(args.run, args.backend, pool_file)
    pool_file.unlink()
    print(f"offline: {offline['texts_per_s']:.1f} texts/s ({offline['backend']})", flush=True)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = out / "server.log"
    with open(log_path, "w") as server_log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medclf", "serve", args.run, "--port", str(port), "--backend", args.backend,
             "--max-batch", str(args.max_batch), "--max-chars", str(args.max_chars)],
            stdout=server_log, stderr=subprocess.STDOUT,
        )
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
            warm = plan_requests(pool, 32, malformed_share=0, multi_share=0.5, multi_size=args.multi_size,
                                 max_batch=args.max_batch, max_chars=args.max_chars, seed=args.seed + 1)
            asyncio.run(send_all(base, warm, args.clients, time.monotonic() + 300))
            rss_before = rss_mib(proc.pid)
            plan = plan_requests(pool, args.requests, malformed_share=args.malformed_share, multi_share=args.multi_share,
                                 multi_size=args.multi_size, max_batch=args.max_batch, max_chars=args.max_chars, seed=args.seed)
            started = time.perf_counter()
            results = asyncio.run(send_all(base, plan, args.clients, time.monotonic() + args.max_seconds))
            wall = time.perf_counter() - started
            rss_after = rss_mib(proc.pid)
            metrics_text = httpx.get(base + "/metrics", timeout=10).text
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    good = [r for r in results if r["kind"] in ("single", "multi")]
    bad = [r for r in results if r["kind"] not in ("single", "multi")]
    ok_texts = sum(r["texts"] for r in good if r["status"] == 200)
    latencies = [r["seconds"] for r in good if r["status"] == 200]
    status_counts = Counter(str(r["status"]) for r in results)
    good_5xx = sum(1 for r in good if not (isinstance(r["status"], int) and r["status"] < 500))
    bad_not_4xx = sum(1 for r in bad if not (isinstance(r["status"], int) and 400 <= r["status"] < 500))
    batches = metric_value(metrics_text, "medclf_batch_texts_count")
    batch_texts = metric_value(metrics_text, "medclf_batch_texts_sum")
    server_tps = ok_texts / wall
    result = {
        "run": args.run, "backend": offline["backend"], "requests_planned": args.requests, "requests_sent": len(results),
        "clients": args.clients, "wall_s": wall, "requests_per_s": len(results) / wall, "texts_per_s": server_tps,
        "latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "p99": percentile(latencies, 99)},
        "status_counts": dict(status_counts),
        "malformed_by_kind": dict(Counter(f"{r['kind']}:{r['status']}" for r in bad)),
        "wellformed": len(good), "wellformed_not_answered_below_500": good_5xx,
        "malformed": len(bad), "malformed_not_4xx": bad_not_4xx,
        "mean_texts_per_forward_batch": batch_texts / batches if batches else None,
        "offline": offline, "server_vs_offline": server_tps / offline["texts_per_s"],
        "rss_mib": {"before": rss_before, "after": rss_after, "ratio": rss_after / rss_before},
        "cpu": os.cpu_count(),
    }
    result["targets"] = {
        "zero 5xx for well-formed requests": good_5xx == 0,
        "every malformed request answered 4xx": bad_not_4xx == 0,
        "server texts/s >= 80% of offline": result["server_vs_offline"] >= 0.8,
        "RSS after within 10% of before": abs(result["rss_mib"]["ratio"] - 1) <= 0.10,
    }
    lines = [
        "| backend | requests | clients | req/s | texts/s | offline texts/s | server/offline | p50 s | p95 s | p99 s | 5xx (well-formed) | malformed not 4xx | RSS before -> after MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['backend']} | {len(results)} | {args.clients} | {result['requests_per_s']:.1f} | {server_tps:.1f} "
        f"| {offline['texts_per_s']:.1f} | {result['server_vs_offline']:.2f} | {result['latency_s']['p50']:.2f} "
        f"| {result['latency_s']['p95']:.2f} | {result['latency_s']['p99']:.2f} | {good_5xx} | {bad_not_4xx} "
        f"| {rss_before:.0f} -> {rss_after:.0f} |",
        "", "Status counts: " + ", ".join(f"{k}: {v}" for k, v in sorted(status_counts.items())),
        "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in result["targets"].items()),
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    write_result(out / "results.json", result)


if __name__ == "__main__":
    main()
