"""Learning curves with few labels: medclf's methods against SetFit on the medical-abstracts protocol split.

For each size k (labelled texts per class) and each seeded draw, the training file holds k texts of every class
drawn from the protocol's training part (nested: draw d at size 16 contains draw d at size 8); every system is
tested on the protocol's 578 test abstracts. One system per process, one after another:

  zero-shot-names / zero-shot-descriptions   medclf train --method zero-shot (no labelled row; run once, a line)
  embeddings[-desc]                          medclf train --method embeddings [--label-descriptions]
  finetune[-desc]                            medclf train (defaults) [--label-descriptions]
  finetune-pretrained[-desc]                 medclf train --model PRETRAINED/model (needs --pretrained RUN)
  setfit                                     benchmarks/accuracy/setfit_anchor.py (SetFit's defaults, the same encoder)

Every medclf run is a few-labels run by its own rule (`--few-shot auto`). Results are appended to
OUT/runs.jsonl as they finish (a rerun skips what is there), then OUT/results.md (mean, spread, each draw) and
OUT/curves.png are written. The full grid (5 sizes x 5 draws x 9 systems) takes many hours on 2 CPU cores; pick
with --sizes, --draws and --systems. `--render OUT` rewrites the table and plot from runs.jsonl.
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

from bench_common import data_parser, model_source  # noqa: E402

NAMES = BENCH / "data" / "abstracts_label_names.csv"
DESCRIPTIONS = BENCH / "data" / "abstracts_label_descriptions.csv"
SYSTEMS = ("zero-shot-names", "zero-shot-descriptions", "embeddings", "embeddings-desc", "finetune", "finetune-desc",
           "finetune-pretrained", "finetune-pretrained-desc", "setfit")
ONCE = ("zero-shot-names", "zero-shot-descriptions")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = data_parser(__doc__)
    parser.add_argument("--out", default="runs/few-labels")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--model", default="default", help="encoder for every system (default: the packaged MiniLM)")
    parser.add_argument("--pretrained", help="a `medclf pretrain` run directory (for the *-pretrained systems)")
    parser.add_argument("--setfit-python", default=sys.executable,
                        help="a Python that has setfit (e.g. a virtual environment's bin/python)")
    parser.add_argument("--setfit-max-steps", type=int, default=-1,
                        help="cap SetFit's contrastive steps (-1: its default, which grows with the square of the rows)")
    parser.add_argument("--names", default=str(NAMES), help="label,description table of the class names")
    parser.add_argument("--descriptions", default=str(DESCRIPTIONS), help="label,description table, a sentence each")
    parser.add_argument("--quick", action="store_true", help="smoke test: 300-row split, one epoch, tiny limits")
    parser.add_argument("--render", metavar="OUT", help="only rewrite OUT's table and plot from its runs.jsonl")
    parser.add_argument("--pause-file", help="while this file exists, wait before starting the next run (keeps other "
                                             "work on the machine out of the timed runs)")
    args = parser.parse_args(argv)
    if args.render:
        return render(Path(args.render))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if any(s.startswith("finetune-pretrained") for s in args.systems) and not args.pretrained:
        parser.error("the *-pretrained systems need --pretrained RUN (a `medclf pretrain` run directory)")

    from bench_common import write_split

    split = write_split(args.data, args.text_column, args.label_column, out / "split", quick=args.quick, quick_rows=300)
    (out / "split.json").write_text(json.dumps(split, indent=2) + "\n")
    done = {(r["system"], r["size"], r["draw"]) for r in read_runs(out)}
    test_csv = out / "split" / "test.csv"
    for size in args.sizes:
        for draw in range(args.draws):
            train_csv = write_draw(out / "split" / "train.csv", out / "draws" / f"k{size}-d{draw}.csv", size, draw)
            for system in args.systems:
                key = (system, 0, 0) if system in ONCE else (system, size, draw)
                if key in done:
                    continue
                wait_while(args.pause_file)
                row = run_system(system, train_csv=train_csv, test_csv=test_csv, out=out, size=key[1], draw=key[2],
                                 args=args)
                with (out / "runs.jsonl").open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                done.add(key)
                print(json.dumps(row), flush=True)
    return render(out)


def wait_while(pause_file: str | None) -> None:
    if pause_file and Path(pause_file).exists():
        print(f"paused while {pause_file} exists", file=sys.stderr, flush=True)
        while Path(pause_file).exists():
            time.sleep(5)


def write_draw(train_csv: Path, path: Path, size: int, draw: int) -> Path:
    """k texts per class; nested over sizes: each class's rows in one seeded order, the first k taken."""
    import pandas as pd

    frame = pd.read_csv(train_csv, dtype={"label": str}, keep_default_na=False)
    parts = []
    for _, rows in frame.groupby("label", sort=True):
        if len(rows) < size:
            raise SystemExit(f"class {rows['label'].iloc[0]!r} has {len(rows)} training rows, fewer than {size}")
        parts.append(rows.sample(frac=1.0, random_state=draw).head(size))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(parts).sample(frac=1.0, random_state=draw).to_csv(path, index=False)
    return path


def run_system(system: str, *, train_csv: Path, test_csv: Path, out: Path, size: int, draw: int,
               args: Any) -> dict[str, Any]:
    name = f"{system}-k{size}-d{draw}"
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if system == "setfit":
        cmd = [args.setfit_python, str(HERE / "setfit_anchor.py"), "--train", str(train_csv), "--test", str(test_csv),
               "--model", model_source(args.model), "--seed", str(draw)]
        steps = 4 if args.quick else args.setfit_max_steps
        if steps > 0:
            cmd += ["--max-steps", str(steps)]
        wall, output = timed(cmd, log)
        figures = json.loads(output.strip().splitlines()[-1])
        return {"system": system, "size": size, "draw": draw, "accuracy": figures["accuracy"],
                "macro_f1": figures["macro_f1"], "train_seconds": figures["train_seconds"], "wall_seconds": wall,
                "setfit_max_steps": steps if steps > 0 else None}
    run_dir = out / "runs" / name
    cmd = [sys.executable, "-m", "medclf", "--quiet", "train", "--data", str(train_csv), "--test-data", str(test_csv),
           "--text-column", "text", "--label-column", "label", "--output", str(run_dir), "--overwrite",
           "--seed", str(draw), "--model", args.model]
    if system.startswith("zero-shot"):
        cmd += ["--method", "zero-shot", "--label-descriptions", args.names if system.endswith("names") else args.descriptions]
    if system.startswith("embeddings"):
        cmd += ["--method", "embeddings"]
    if system.startswith("finetune-pretrained"):
        cmd[cmd.index("--model") + 1] = str(Path(args.pretrained) / "model")
    if system.endswith("-desc"):
        cmd += ["--label-descriptions", args.descriptions]
    if args.quick and system.startswith("finetune"):
        cmd += ["--epochs", "1"]
    wall, _ = timed(cmd, log)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    interval = metrics["test"].get("intervals", {}).get("macro_f1") or {}
    return {"system": system, "size": size, "draw": draw, "accuracy": metrics["test"]["accuracy"],
            "macro_f1": metrics["test"]["macro_f1"], "macro_f1_low": interval.get("low"),
            "macro_f1_high": interval.get("high"), "few_shot": metrics.get("few_shot"),
            "selected": metrics.get("selected"), "train_seconds": metrics["timing"]["train_seconds"],
            "wall_seconds": wall}


def timed(cmd: list[str], log: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write_text(" ".join(cmd) + "\n\n" + proc.stdout + "\n" + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} ... failed with exit {proc.returncode}; see {log}")
    return wall, proc.stdout


def read_runs(out: Path) -> list[dict[str, Any]]:
    path = out / "runs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of macro-F1 and training seconds per (system, size)."""
    import numpy as np

    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["system"], row["size"]), []).append(row)
    table = []
    for (system, size), runs in sorted(groups.items(), key=lambda kv: (SYSTEMS.index(kv[0][0]), kv[0][1])):
        f1 = np.array([r["macro_f1"] for r in runs])
        train = np.array([r["train_seconds"] for r in runs])
        table.append({"system": system, "size": size, "draws": len(runs), "macro_f1_mean": float(f1.mean()),
                      "macro_f1_std": float(f1.std(ddof=1)) if len(runs) > 1 else 0.0,
                      "macro_f1_each": [round(float(v), 4) for v in f1],
                      "train_seconds_mean": float(train.mean()),
                      "wall_seconds_mean": float(np.mean([r["wall_seconds"] for r in runs]))})
    return table


def render(out: Path) -> dict[str, Any]:
    rows = read_runs(out)
    table = summarize(rows)
    lines = ["| system | per class | draws | macro-F1 mean | spread (sd) | each draw | training (s) | whole command (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for t in table:
        per_class = "none (zero-shot)" if t["system"] in ONCE else str(t["size"])
        lines.append(f"| {t['system']} | {per_class} | {t['draws']} | {t['macro_f1_mean']:.3f} | {t['macro_f1_std']:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in t['macro_f1_each'])} | {t['train_seconds_mean']:.0f} | "
                     f"{t['wall_seconds_mean']:.0f} |")
    lines += ["", *paired_lines(rows)]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"table": table}, indent=2) + "\n", encoding="utf-8")
    plot(table, out / "curves.png")
    print("\n".join(lines))
    return {"table": table}


def paired_lines(rows: list[dict[str, Any]]) -> list[str]:
    """medclf's best method per draw against SetFit on the same draw (where both ran)."""
    by_key: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["size"], row["draw"]), {})[row["system"]] = row
    lines = []
    for size in sorted({s for s, _ in by_key if s}):
        pairs = []
        for (s, _draw), systems in sorted(by_key.items()):
            medclf = [r for name, r in systems.items() if name != "setfit" and name not in ONCE]
            if s != size or "setfit" not in systems or not medclf:
                continue
            best = max(medclf, key=lambda r: r["macro_f1"])
            pairs.append((best, systems["setfit"]))
        if pairs:
            wins = sum(b["macro_f1"] > s["macro_f1"] for b, s in pairs)
            each = ", ".join(f"{b['system']} {b['macro_f1']:.3f} vs {s['macro_f1']:.3f}" for b, s in pairs)
            lines.append(f"- {size} per class: medclf's best run of each draw beats SetFit on {wins} of {len(pairs)} draws "
                         f"(medclf's best vs SetFit, draw by draw: {each}).")
    return lines


def plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    sizes = sorted({t["size"] for t in table if t["system"] not in ONCE}) or [1]
    for system in SYSTEMS:
        points = [t for t in table if t["system"] == system]
        if not points:
            continue
        if system in ONCE:
            ax.axhline(points[0]["macro_f1_mean"], linestyle=":", color="grey" if system.endswith("names") else "black",
                       label=f"{system} (no labels)")
            continue
        xs = [t["size"] for t in points]
        ax.errorbar(xs, [t["macro_f1_mean"] for t in points], yerr=[t["macro_f1_std"] for t in points], marker="o",
                    capsize=3, label=system, linestyle="--" if system == "setfit" else "-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("labelled texts per class")
    ax.set_ylabel("test macro-F1 (mean of draws, bar: sd)")
    ax.set_title("Medical abstracts (5 classes), 578 test texts")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
