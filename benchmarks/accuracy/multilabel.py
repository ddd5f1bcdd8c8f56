"""Multi-label: per-label thresholds tuned on validation against a fixed 0.5, in one run.

python benchmarks/accuracy/multilabel.py [--out bench-out/multilabel] [--model default] [--methods finetune,embeddings]
    [--epochs 3] [--quick N]

Builds a multi-label set from the packaged demo snippets (invented, no real text): each snippet keeps its
specialty as one label and gets, independently of it (seeded coin, --urgent-share of the rows), a
second label 'urgent' through one of several generated urgency sentences placed before or after the
snippet; the other rows get a routine sentence. So every text has one or two labels out of seven, and the
two kinds of label are unrelated. Writes OUT/multilabel.csv (column `labels`, '|'-separated), then
trains `medclf train --multi-label` with each --methods entry (same split: iterative stratification,
seed 42), and reads each run's metrics.json: test micro/macro/samples F1 and subset accuracy at the
tuned thresholds (what the run uses) and at 0.5 for every label (the same probabilities), plus times.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import demo_frame, multilabel_frame, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-out/multilabel")
    parser.add_argument("--model", default="default")
    parser.add_argument("--methods", default="finetune,embeddings")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--urgent-share", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", type=int, default=None, help="use only about N snippets (smoke test)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = demo_frame(args.quick)
    data = out / "multilabel.csv"
    multilabel_frame(frame, random.Random(args.seed), args.urgent_share).to_csv(data, index=False)

    rows = {}
    for method in args.methods.split(","):
        run = out / f"run-{method}"
        cmd = [sys.executable, "-m", "medclf", "--quiet", "train", "--data", str(data), "--text-column", "text",
               "--multi-label", "--label-column", "labels", "--model", args.model, "--method", method,
               "--epochs", str(args.epochs), "--output", str(run), "--overwrite"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        metrics = json.loads((run / "metrics.json").read_text())
        test, fixed = metrics["test"], metrics["test"]["at_threshold_0.5"]
        rows[method] = {
            "labels": test["labels"], "test_texts": test["n"],
            "tuned": {k: test[k] for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")},
            "fixed_0.5": fixed,
            "thresholds": test["thresholds"],
            "per_label_f1": {lab: test["per_class"][lab]["f1"] for lab in test["labels"]},
            "train_seconds": metrics["timing"]["train_seconds"] + metrics["timing"].get("head_init_seconds", 0.0),
            "test_inference_seconds": metrics["timing"]["test_inference_seconds"],
        }
        print(json.dumps({method: rows[method]}), flush=True)
    lines = ["| method | thresholds | micro-F1 | macro-F1 | samples-F1 | subset accuracy | Hamming loss | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for method, r in rows.items():
        for name, m in (("tuned on validation", r["tuned"]), ("0.5 for every label", r["fixed_0.5"])):
            lines.append(f"| {method} | {name} | {m['micro_f1']:.3f} | {m['macro_f1']:.3f} | {m['samples_f1']:.3f} | "
                         f"{m['subset_accuracy']:.3f} | {m['hamming_loss']:.4f} | {r['train_seconds']:.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    write_result(out / "results.json", {"epochs": args.epochs, "model": args.model, "urgent_share": args.urgent_share,
                                        "rows_in_set": len(frame), "rows": rows})


if __name__ == "__main__":
    main()
