"""Streaming predict: peak memory against input size, and throughput against one in-memory pass.

python benchmarks/speed/stream_predict.py --run RUN_DIR [--rows 20000,200000] [--in-memory 20000]
    [--chunk-rows 10000] [--out bench-out/stream]

Builds Parquet files of the requested sizes from the packaged demo snippets (invented, repeated in
order; a `note_id` column rides along), then runs `medclf predict RUN --input F --output OUT.parquet`
for each size, one process after another, and reads each process's peak RSS and wall time from
os.wait4. `--in-memory N` also runs N rows with --chunk-rows N (the whole file in one chunk: what
predict did before streaming) for the throughput comparison on the same rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import write_result  # noqa: E402


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"command failed ({status}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024


def demo_parquet(folder: Path, n: int) -> Path:
    """folder/notes-N.parquet: N rows of the demo snippets in order (note_id n0, n1, ...), written once."""
    import pandas as pd
    from bench_common import demo_frame

    data = folder / f"notes-{n}.parquet"
    if not data.exists():
        snippets = demo_frame()["text"].tolist()
        pd.DataFrame({"note_id": [f"n{i}" for i in range(n)],
                      "text": [snippets[i % len(snippets)] for i in range(n)]}).to_parquet(data, index=False)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--rows", default="20000,200000")
    parser.add_argument("--in-memory", type=int, default=20000, help="rows for the one-chunk comparison (0: skip)")
    parser.add_argument("--chunk-rows", type=int, default=10000)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", default="bench-out/stream")
    args = parser.parse_args(argv)

    import pandas as pd

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(n) for n in args.rows.split(",")]
    cases = [(n, args.chunk_rows) for n in sizes] + ([(args.in_memory, args.in_memory)] if args.in_memory else [])
    rows = []
    for n, chunk in cases:
        data = demo_parquet(out, n)
        result = out / f"pred-{n}-{chunk}.parquet"
        cmd = [sys.executable, "-m", "medclf", "--quiet", "predict", args.run, "--input", str(data), "--output",
               str(result), "--chunk-rows", str(chunk), "--backend", args.backend]
        print("$", " ".join(cmd), flush=True)
        wall, rss = run_measured(cmd)
        written = len(pd.read_parquet(result, columns=["row"]))
        assert written == n, (written, n)
        rows.append({"rows": n, "chunk_rows": chunk, "mode": "one chunk (in memory)" if chunk >= n else "streaming",
                     "wall_seconds": wall, "rows_per_second": n / wall, "peak_rss_mib": rss})
        print(rows[-1], flush=True)
        result.unlink()
    lines = ["| rows | mode | chunk rows | wall s | rows/s | peak RSS MiB |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['rows']:,} | {r['mode']} | {r['chunk_rows']:,} | {r['wall_seconds']:.1f} | {r['rows_per_second']:.0f} | "
              f"{r['peak_rss_mib']:.0f} |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    write_result(out / "results.json", {"run": args.run, "backend": args.backend, "rows": rows})


if __name__ == "__main__":
    main()
