"""PyTorch fp32 vs ONNX Runtime fp32 vs ONNX int8 on the same texts, in one process, one after another.

python benchmarks/speed/bench_export.py --run RUN_DIR --check SPLIT/train.csv --test SPLIT/test.csv \
    [--out bench-out/export] [--rounds 2] [--int8-recipe auto|dynamic|blockwise-128|blockwise-32]

Copies RUN_DIR to OUT/run, runs `medclf export` there (check texts: a 256-text sample of --check,
not the test texts), then for each backend loads `TextClassifier.load(run, backend=...)`, warms up on
8 texts and times `predict_proba` on every test text (tokenization included, batch 16). Each backend
is timed --rounds times, interleaved (torch, onnx, int8, torch, ...), and the best round is kept.
Reports texts/s, the ratio to PyTorch fp32, top-label agreement with PyTorch, the largest probability
difference, accuracy and macro-F1 against the labels. Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import read_split, scores, write_result  # noqa: E402

BACKENDS = ("torch", "onnx", "onnx-int8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a medclf run directory (left unchanged: the export goes into a copy)")
    parser.add_argument("--check", required=True, help="texts for the export's self-check (e.g. the training split)")
    parser.add_argument("--test", required=True, help="labelled test split (CSV with text,label)")
    parser.add_argument("--out", default="bench-out/export")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--int8-recipe", default="auto", help="passed to `medclf export --int8-recipe`")
    args = parser.parse_args(argv)

    import numpy as np

    from medclf.inference.classifier import TextClassifier

    out = Path(args.out)
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("onnx"))
    started = time.perf_counter()
    export = subprocess.run([sys.executable, "-m", "medclf", "export", str(run), "--data", args.check,
                             "--int8-recipe", args.int8_recipe],
                            capture_output=True, text=True)
    export_s = time.perf_counter() - started
    print(export.stdout, export.stderr, sep="\n")
    if export.returncode != 0:
        raise SystemExit(f"medclf export failed with status {export.returncode}")
    texts, gold = read_split(args.test)
    available = [b for b in BACKENDS if b != "onnx-int8" or (run / "onnx" / "model.int8.onnx").is_file()]
    classifiers = {b: TextClassifier.load(run, backend=b) for b in available}
    for clf in classifiers.values():
        clf.predict_proba(texts[:8])
    best: dict[str, float] = {}
    probs: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for name, clf in classifiers.items():
            t0 = time.perf_counter()
            probs[name] = clf.predict_proba(texts)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    labels = np.array(classifiers["torch"].labels)
    ref = probs["torch"]
    rows = {}
    for name in available:
        pred = labels[probs[name].argmax(axis=1)].tolist()
        rows[name] = {
            "texts_per_s": len(texts) / best[name],
            "speedup_vs_torch": best["torch"] / best[name],
            "top_label_agreement": float((probs[name].argmax(axis=1) == ref.argmax(axis=1)).mean()),
            "max_abs_prob_diff": float(np.abs(probs[name] - ref).max()),
            **scores(gold, pred),
        }
    import json

    info = json.loads((run / "onnx" / "export.json").read_text())
    result = {"n_texts": len(texts), "rounds": args.rounds, "export_seconds": round(export_s, 1),
              "int8_recipe": info["check"]["int8_recipe"], "int8_tried": info["check"]["int8_tried"], "backends": rows}
    lines = ["| backend | texts/s | x PyTorch | top-label agreement | max abs prob diff | accuracy | macro-F1 |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['texts_per_s']:.1f} | {r['speedup_vs_torch']:.2f} | {100 * r['top_label_agreement']:.1f}% "
                     f"| {r['max_abs_prob_diff']:.2g} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    write_result(out / "results.json", result)


if __name__ == "__main__":
    main()
