"""The few-labels rule on a full but imbalanced table: the rule before (the rarest class under 30 training rows ->
few labels) against the rule now (few labels only when the validation part cannot rank weights).

The abstracts protocol split (stratified 80/20, seed 42), then one class cut to --rare-rows training rows (seeded
per run); the test part is the protocol's 578 abstracts, untouched. With one class at 9 rows the rule before
applied (`--few-shot on` reproduces what it decided); the rule now does not (`--few-shot auto`: 200+ validation
rows rank weights). For each seed, both rules are trained one after another in their own process; the table gives
test macro-F1 per seed, the mean with a t interval, and the paired difference (now - before) with its t interval.

  python benchmarks/accuracy/few_labels_rule.py --method embeddings --seeds 0 1 2 3 4 --out bench-out/few-labels-rule
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import data_parser, model_source, write_result  # noqa: E402

RULES = {"before": "on", "now": "auto"}
"""The rule -> the --few-shot value that reproduces its decision on this table."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = data_parser(__doc__)
    parser.add_argument("--method", default="embeddings", choices=("embeddings", "finetune"))
    parser.add_argument("--rare-class", default=None, help="label to cut (default: the second most rare)")
    parser.add_argument("--rare-rows", type=int, default=9)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--model", default="default")
    parser.add_argument("--extra", nargs="*", default=[], help="more `medclf train` options, each as --extra=--opt=value (e.g. --extra=--epochs=1)")
    parser.add_argument("--out", default="bench-out/few-labels-rule")
    args = parser.parse_args(argv)
    import pandas as pd
    from sklearn.model_selection import train_test_split

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(args.data, dtype={args.label_column: str}, keep_default_na=False)
    frame = pd.DataFrame({"text": frame[args.text_column].astype(str), "label": frame[args.label_column].astype(str)})
    train, test = train_test_split(frame, test_size=0.2, stratify=frame["label"], random_state=42)
    counts = train["label"].value_counts()
    rare = args.rare_class or counts.index[-2]
    test_csv = out / "test.csv"
    test.to_csv(test_csv, index=False)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        keep = train[train["label"] == rare].sample(n=min(args.rare_rows, counts[rare]), random_state=seed)
        cut = pd.concat([train[train["label"] != rare], keep]).sample(frac=1.0, random_state=seed)
        train_csv = out / f"train-seed{seed}.csv"
        cut.to_csv(train_csv, index=False)
        for rule, mode in RULES.items():
            rows.append(run(rule, mode, seed=seed, train_csv=train_csv, test_csv=test_csv, out=out, args=args))
            print(json.dumps(rows[-1]), flush=True)
    result = {"method": args.method, "rare_class": rare, "rare_rows": args.rare_rows, "train_rows": int(len(cut)),
              "test_rows": int(len(test)), "seeds": args.seeds, "runs": rows, "summary": summarise(rows)}
    write_result(out / "results.json", result)
    (out / "results.md").write_text(render(result), encoding="utf-8")
    print(render(result))
    return result


def run(rule: str, mode: str, *, seed: int, train_csv: Path, test_csv: Path, out: Path, args: Any) -> dict[str, Any]:
    run_dir = out / "runs" / f"{rule}-seed{seed}"
    cmd = [sys.executable, "-m", "medclf", "--quiet", "train", "--data", str(train_csv), "--test-data", str(test_csv),
           "--text-column", "text", "--label-column", "label", "--output", str(run_dir), "--overwrite",
           "--seed", str(seed), "--model", model_source(args.model), "--method", args.method, "--few-shot", mode,
           *args.extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"medclf train failed ({rule}, seed {seed}): {proc.stderr.strip().splitlines()[-1:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"rule": rule, "few_shot": mode, "seed": seed, "applied": metrics["few_shot"],
            "macro_f1": metrics["test"]["macro_f1"], "accuracy": metrics["test"]["accuracy"],
            "selected": metrics.get("selected"), "wall_seconds": time.perf_counter() - start}


def t_interval(values: list[float]) -> tuple[float, float, float]:
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {rule: {r["seed"]: r["macro_f1"] for r in rows if r["rule"] == rule} for rule in RULES}
    seeds = sorted(set(by["before"]) & set(by["now"]))
    summary = {rule: dict(zip(("mean", "low", "high"), t_interval([by[rule][s] for s in seeds]))) for rule in RULES}
    summary["now_minus_before"] = dict(zip(("mean", "low", "high"),
                                           t_interval([by["now"][s] - by["before"][s] for s in seeds])))
    return summary


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [f"# The few-labels rule on an imbalanced table ({result['method']})", "",
             f"Class {result['rare_class']!r} cut to {result['rare_rows']} training rows; {result['train_rows']} "
             f"training rows, {result['test_rows']} test rows; seeds {result['seeds']}.", "",
             "| rule | applied | test macro-F1, mean [95% t interval] | each seed |", "|---|---|---|---|"]
    for rule in RULES:
        runs = [r for r in result["runs"] if r["rule"] == rule]
        lines.append(f"| {rule} (--few-shot {RULES[rule]}) | {sorted({r['applied'] for r in runs})} | "
                     f"{s[rule]['mean']:.4f} [{s[rule]['low']:.4f}, {s[rule]['high']:.4f}] | "
                     + ", ".join(f"{r['macro_f1']:.4f}" for r in runs) + " |")
    d = s["now_minus_before"]
    lines += ["", f"Paired difference now - before: {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}].", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
