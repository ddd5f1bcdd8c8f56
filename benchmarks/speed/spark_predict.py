"""The Spark UDF beside plain predict on the same rows.

python benchmarks/speed/spark_predict.py --run RUN_DIR [--rows 20000] [--master local[2]] [--out bench-out/spark]

Writes (or reuses) a Parquet file of --rows demo snippets, then runs, one process after another,
`medclf predict RUN --input F --output OUT.parquet` (this process, streaming) and `medclf predict RUN --engine
spark --spark-master MASTER --input F --output OUT.parquet` (a pandas UDF on Spark), and reports wall time,
rows/s and whether both gave the same labels. Both walls include starting the process (and Spark's JVM).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import write_result  # noqa: E402
from stream_predict import demo_parquet, run_measured  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", default="bench-out/spark")
    args = parser.parse_args(argv)

    import shutil

    import pandas as pd

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = demo_parquet(out, args.rows)
    rows = {}
    for engine in ("local", "spark"):
        result = out / f"pred-{engine}.parquet"
        shutil.rmtree(result, ignore_errors=True) if result.is_dir() else result.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "medclf", "--quiet", "predict", args.run, "--input", str(data), "--output",
               str(result), "--engine", engine, "--spark-master", args.master]
        print("$", " ".join(cmd), flush=True)
        wall, rss = run_measured(cmd)
        table = pd.read_parquet(result).sort_values("row" if engine == "local" else "note_id")
        rows[engine] = {"wall_seconds": wall, "rows_per_second": args.rows / wall, "peak_rss_mib_driver": rss,
                        "labels": dict(zip(table["note_id"], table["label"]))}
        print(engine, {k: v for k, v in rows[engine].items() if k != "labels"}, flush=True)
    same = rows["local"]["labels"] == rows["spark"]["labels"]
    for row in rows.values():
        del row["labels"]
    lines = ["| engine | rows | wall s | rows/s |", "|---|---|---|---|"]
    lines += [f"| {engine} | {args.rows:,} | {r['wall_seconds']:.1f} | {r['rows_per_second']:.0f} |" for engine, r in rows.items()]
    (out / "results.md").write_text("\n".join(lines) + f"\n\nsame labels: {same}\n", encoding="utf-8")
    print("\n".join(lines), f"same labels: {same}")
    write_result(out / "results.json", {"run": args.run, "rows": args.rows, "master": args.master, "engines": rows,
                                        "same_labels": same})


if __name__ == "__main__":
    main()
