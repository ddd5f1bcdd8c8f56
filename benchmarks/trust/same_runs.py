"""Same seeded runs before and after a change that should not change behaviour (a restructuring).

python benchmarks/trust/same_runs.py --out bench-out/same-runs/before [--rows 480] [--quick]
python benchmarks/trust/same_runs.py --compare bench-out/same-runs/before/same_runs.json bench-out/same-runs/after/same_runs.json
python benchmarks/trust/same_runs.py --load bench-out/same-runs/before

Cuts a class-stratified subset of --rows training and --rows/4 test rows from the protocol split of the medical
abstracts (stratified 80/20, seed 42; ../shared/data/medical-abstracts/README.md), then runs, seeded, the CLI on
it: `train` single-label fine-tuning, multi-label fine-tuning (the condition plus a second label 'long' for
abstracts over the median length), chunk mode (windows of 64 tokens, max pooling), the embeddings method, and
`pretrain` (a few MLM steps). Each run's fingerprint is its metrics.json without the timings and with the output
folder written as <out> (per-epoch history, validation of the kept weights, test figures) plus the SHA-256 of its
test predictions file; `pretrain`'s is its held-out MLM losses. --compare prints which fingerprints differ, exits 1 if any does. Seeded runs on one machine
are bitwise repeatable (PyTorch's CPU kernels are deterministic at a fixed thread count), so the two files must
be equal. --load DIR loads the train runs of an earlier --out DIR with the code of today and predicts their test
texts again: the largest difference from the probabilities the run saved (predictions_test.csv, 6 decimals) and
whether every decision is the same.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import data_parser, write_result  # noqa: E402

TIMING_KEYS = ("seconds", "timing", "per_second", "peak_memory", "created")


def _strip(value: Any) -> Any:
    """A metrics.json without what changes from one run to the next on the same machine (times, dates)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not any(t in k for t in TIMING_KEYS)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _normal(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """A fingerprint file's content as compared: without timings, the output folder's path written as <out>."""
    text = json.dumps(_strip(result)).replace(str(out.resolve()), "<out>").replace(str(out), "<out>")
    return json.loads(text)


def subset(args: Any, out: Path) -> tuple[Path, Path, Path]:
    """Train and test CSVs (single-label) and a multi-label train CSV cut from the protocol split."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    frame = pd.read_csv(args.data)
    frame = frame.rename(columns={args.text_column: "text", args.label_column: "label"})[["text", "label"]]
    train, test = train_test_split(frame, test_size=0.2, stratify=frame["label"], random_state=42)
    train = train_test_split(train, train_size=args.rows, stratify=train["label"], random_state=0)[0]
    test = train_test_split(test, train_size=args.rows // 4, stratify=test["label"], random_state=0)[0]
    paths = out / "train.csv", out / "test.csv", out / "train-multilabel.csv"
    train.to_csv(paths[0], index=False)
    test.to_csv(paths[1], index=False)
    long = train["text"].str.split().str.len() > train["text"].str.split().str.len().median()
    labels = train["label"].astype(str) + long.map({True: "|long", False: ""})
    train.assign(labels=labels)[["text", "labels"]].to_csv(paths[2], index=False)
    return paths


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def fingerprint(run_dir: Path) -> dict[str, Any]:
    result = {"metrics": _strip(json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")))}
    predictions = run_dir / "predictions_test.csv"
    if predictions.exists():
        result["predictions_sha256"] = hashlib.sha256(predictions.read_bytes()).hexdigest()
    return result


def load_again(base: Path) -> list[str]:
    """Each train run under `base` (written by an earlier --out), loaded and run on its test texts by today's code."""
    import numpy as np
    import pandas as pd

    from medclf.inference.classifier import TextClassifier

    lines = []
    for name in ("finetune", "chunk", "embeddings", "multi-label"):
        clf = TextClassifier.load(base / name, backend="torch")
        saved = pd.read_csv(base / name / "predictions_test.csv", keep_default_na=False)
        table = pd.read_csv(base / ("train-multilabel.csv" if name == "multi-label" else "test.csv"))
        texts = table["text"].iloc[saved["row"].to_numpy()].tolist()  # the multi-label run split its own table
        probs = clf.predict_proba(texts)
        before = saved[[f"prob_{lab}" for lab in clf.labels]].to_numpy(float)
        lines.append(f"{name}: {len(texts)} test texts, max |p - saved p| = {np.abs(probs - before).max():.2e}, "
                     f"same decisions: {clf.decide(probs) == clf.decide(before)}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--out", default="bench-out/same-runs/run")
    parser.add_argument("--rows", type=int, default=480, help="training rows of the subset")
    parser.add_argument("--model", default="default")
    parser.add_argument("--quick", action="store_true", help="only 96 rows and one run of each kind (smoke test)")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="two same_runs.json files")
    parser.add_argument("--load", metavar="DIR", help="an earlier --out: load its runs with today's code and predict")
    args = parser.parse_args(argv)
    if args.load:
        print("\n".join(load_again(Path(args.load))))
        return
    if args.compare:
        before, after = (_normal(json.loads(Path(p).read_text(encoding="utf-8")), Path(p).parent) for p in args.compare)
        differ = [name for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]
        for name in sorted(set(before) | set(after)):
            print(f"{name}: {'DIFFERENT' if name in differ else 'identical'}")
        raise SystemExit(1 if differ else 0)
    if args.quick:
        args.rows = 96
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test, multi = subset(args, out)
    medclf = [sys.executable, "-m", "medclf", "--quiet"]
    common = ["--model", args.model, "--seed", "0", "--epochs", "2", "--max-length", "128", "--overwrite"]
    runs = {
        "finetune": ["--data", str(train), "--test-data", str(test)],
        "multi-label": ["--data", str(multi), "--multi-label", "--label-column", "labels"],
        "chunk": ["--data", str(train), "--test-data", str(test), "--long-text", "chunk", "--max-length", "64",
                  "--max-chunks", "4"],
        "embeddings": ["--data", str(train), "--test-data", str(test), "--method", "embeddings"],
    }
    result: dict[str, Any] = {}
    for name, extra in runs.items():
        run_dir = out / name
        run([*medclf, "train", *common, *extra, "--output", str(run_dir)])
        result[name] = fingerprint(run_dir)
    run_dir = out / "pretrain"
    run([*medclf, "pretrain", "--data", str(train), "--model", args.model, "--seed", "0", "--max-steps", "12",
         "--max-length", "128", "--overwrite", "--output", str(run_dir)])
    result["pretrain"] = fingerprint(run_dir)
    write_result(out / "same_runs.json", _normal(result, out))


if __name__ == "__main__":
    main()
