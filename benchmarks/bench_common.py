"""Helpers shared by the benchmark scripts: split files, scores, peak memory, result files."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
"""The benchmarks folder (scripts in its subfolders put it on sys.path to import this module)."""
DEFAULT_DATA = BENCH.parent.parent / "shared" / "data" / "medical-abstracts" / "medical_tc_test.csv"
"""The shared medical-abstracts corpus (see its README for source, license and the split protocol)."""


def data_parser(doc: str | None) -> Any:
    """An argument parser with the options every script on the abstracts shares: --data and its columns."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="labelled table (default: medical abstracts)")
    parser.add_argument("--text-column", default="medical_abstract")
    parser.add_argument("--label-column", default="condition_label")
    return parser


def read_split(path: str | Path) -> tuple[list[str], list[str]]:
    """(texts, labels) of a split file written by compare.py (CSV with columns text, label)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={"label": str}, keep_default_na=False)
    return frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()


def scores(y_true: list[str], y_pred: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y_true, y_pred)), "macro_f1": float(f1_score(y_true, y_pred, average="macro"))}


def agreement(reference: Any, other: Any) -> dict[str, float | None]:
    """How far one system's predictions are from a reference's on the same texts: the share of identical top labels
    and, where both give probabilities over the same label columns, the largest probability difference. Each side is
    a frame written by `write_predictions` (column `label`; `p:<label>` columns where the system gives them)."""
    import numpy as np

    same = float((reference["label"].to_numpy() == other["label"].to_numpy()).mean())
    columns = [c for c in reference.columns if c.startswith("p:")]
    diff = None
    if columns and all(c in other.columns for c in columns):
        diff = float(np.abs(reference[columns].to_numpy() - other[columns].to_numpy()).max())
    return {"top_label_agreement": same, "max_prob_diff": diff}


def predictions_frame(labels: list[str], probs: Any = None, columns: list[str] | None = None) -> Any:
    """Predicted labels (and probabilities, one `p:<label>` column each): no text, only what `agreement` reads."""
    import pandas as pd

    frame = pd.DataFrame({"label": labels})
    if probs is not None and columns is not None:
        for j, name in enumerate(columns):
            frame[f"p:{name}"] = probs[:, j]
    return frame


def write_predictions(path: str | Path, labels: list[str], probs: Any = None, columns: list[str] | None = None) -> None:
    """`predictions_frame` as CSV (for agreement between systems run in separate processes)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    predictions_frame(labels, probs, columns).to_csv(path, index=False)


def read_predictions(path: str | Path) -> Any:
    import pandas as pd

    return pd.read_csv(path, dtype={"label": str}, keep_default_na=False)


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def model_source(model: str) -> str:
    """'default' -> the packaged MiniLM directory; anything else as given."""
    if model == "default":
        from medclf.model.modeling import default_model_dir

        return str(default_model_dir())
    return model


def demo_frame(quick: int | None = None) -> Any:
    """The packaged demo snippets (text, specialty); with quick, about that many, every specialty kept."""
    import pandas as pd

    from medclf.core.tables import demo_data_path

    frame = pd.read_csv(demo_data_path())
    if quick:
        frame = frame.groupby("specialty", group_keys=False).head(max(2, quick // 6)).reset_index(drop=True)
    return frame


URGENT = [
    "Seen urgently today.",
    "Urgent review requested by the on-call team.",
    "Needs same-day assessment.",
    "Priority: urgent.",
    "Escalated as an emergency referral.",
    "Flagged for immediate review.",
    "Sent straight to the emergency department.",
    "Red-flag pathway; see within 24 hours.",
]
ROUTINE = [
    "Routine follow-up.",
    "Non-urgent; next available clinic.",
    "Routine referral.",
    "Review at the usual interval.",
    "No need for an early appointment.",
    "Added to the standard waiting list.",
    "Planned review in three months.",
    "Routine outpatient appointment booked.",
]


def multilabel_frame(frame: Any, rng: Any, urgent_share: float) -> Any:
    """A multi-label set from the demo snippets (text, specialty): each keeps its specialty as one label and gets,
    independently (a seeded coin, `urgent_share` of the rows), the label 'urgent' through one of URGENT's sentences
    placed before or after it; the others get one of ROUTINE's. Columns text and labels ('|'-separated)."""
    texts, labels = [], []
    for text, specialty in zip(frame["text"], frame["specialty"]):
        urgent = rng.random() < urgent_share
        sentence = rng.choice(URGENT if urgent else ROUTINE)
        texts.append(f"{sentence} {text}" if rng.random() < 0.5 else f"{text} {sentence}")
        labels.append(specialty + ("|urgent" if urgent else ""))
    return frame.assign(text=texts, labels=labels)[["text", "labels"]]


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    print(json.dumps(result, indent=2))


def write_split(data: str, text_column: str, label_column: str, directory: Path, *, quick: bool, quick_rows: int) -> dict[str, Any]:
    """The protocol's stratified 80/20 split (seed 42), via medclf's own loader and splitter, as CSV text,label."""
    import pandas as pd

    from medclf.core.labels import load_labeled
    from medclf.training.splits import stratified_split

    rows = load_labeled(data, text_columns=[text_column], label_column=label_column, drop_empty=False)
    if quick and len(rows.labels) > quick_rows:
        _, keep = stratified_split(rows.labels, fraction=quick_rows / len(rows.labels), seed=42, source=data,
                                   part="sample", option="")
        rows = rows.subset(keep)
    train_idx, test_idx = stratified_split(rows.labels, fraction=0.2, seed=42, source=data, part="test", option="")
    directory.mkdir(parents=True, exist_ok=True)
    for name, idx in (("train", train_idx), ("test", test_idx)):
        pd.DataFrame({"text": [rows.texts[i] for i in idx], "label": [rows.labels[i] for i in idx]}).to_csv(
            directory / f"{name}.csv", index=False)
    return {"n_rows": len(rows.labels), "n_train": len(train_idx), "n_test": len(test_idx),
            "split": "stratified 80/20, seed 42" + (f" of a stratified {quick_rows}-row sample" if quick else "")}


def run_parser(doc: str | None, out: str) -> Any:
    """data_parser with the options of the scripts that train one `medclf train` run on the split and read it:
    --method, --model, --quick (a sample, for the benchmark tests), --extra (more train options), --out."""
    parser = data_parser(doc)
    parser.add_argument("--method", default="finetune", choices=("finetune", "embeddings"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--quick", action="store_true", help="a sample of the data (the benchmark test)")
    parser.add_argument("--extra", nargs="*", default=[], help="more `medclf train` options, each as --extra=--opt=value")
    parser.add_argument("--out", default=out)
    return parser


def train_on_split(args: Any, split: Path, run: Path, *options: str) -> tuple[str, float]:
    """`medclf train` on split/train.csv with split/test.csv as its test part (run_parser's --method, --model and
    --extra, then `options`), written to `run`: the command as a user would type it, and its wall seconds."""
    cmd = [sys.executable, "-m", "medclf", "train", "--data", str(split / "train.csv"), "--test-data",
           str(split / "test.csv"), "--method", args.method, "--model", args.model, "--output", str(run), "--overwrite",
           *options, *args.extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return " ".join(["medclf", *cmd[3:]]), time.perf_counter() - start


def read_part(path: Path, labels: list[str], sep: str = "|") -> tuple[Any, Any]:
    """(calibrated probabilities, class ids in `labels`' order) of one of a run's predictions_*.csv files; for a
    multi-label run (a `labels` column, joined with `sep`), a 0/1 matrix of the labels each row holds."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(path, dtype={"label": str, "labels": str, "predicted": str}, keep_default_na=False)
    index = {lab: k for k, lab in enumerate(labels)}
    probs = frame[[f"prob_{lab}" for lab in labels]].to_numpy(float)
    if "labels" in frame.columns:
        y = np.zeros((len(frame), len(labels)))
        for row, cell in enumerate(frame["labels"]):
            y[row, [index[lab] for lab in cell.split(sep) if lab]] = 1.0
        return probs, y
    return probs, frame["label"].map(index).to_numpy(int)


def timed(name: str, cmd: list[str], out: Path) -> dict[str, Any]:
    """Run one system in its own process; its wall time and peak RSS (from wait4), output to logs/NAME.log."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))}
    log_path = out / "logs" / f"{name}.log"
    print(f"[compare] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise SystemExit(f"[compare] {name} failed with exit status {code}; log {log_path}:\n{tail}")
    print(f"[compare] {name}: {wall:.0f} s, peak RSS {usage.ru_maxrss / 2**20:.2f} GiB", file=sys.stderr, flush=True)
    return {"wall_seconds": wall, "peak_rss_gib": usage.ru_maxrss / 2**20}


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def write_results(out: Path, results: dict[str, Any], render: Any) -> dict[str, Any]:
    """OUT/results.json and OUT/results.md (the table `render` makes of them, also printed)."""
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = render(results)
    (out / "results.md").write_text(text, encoding="utf-8")
    print(text)
    return results


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (elsewhere: what platform says)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
"""The CPU flags that decide which kernels and precisions run fast: named beside every speed figure."""


def cpu_flags_line() -> str:
    """'Intel(R) Xeon(R) ... (2 cores): avx2 avx512f ...': the CPU model, its cores and which SPEED_FLAGS it has,
    as medclf's own precision choice sees them (MEDCLF_HIDE_CPU_FLAGS / MEDCLF_ADD_CPU_FLAGS applied, and named)."""
    from medclf.model.modeling import ADD_CPU_FLAGS_ENV, HIDE_CPU_FLAGS_ENV, cpu_flags

    flags = cpu_flags()
    present = [f for f in SPEED_FLAGS if f in flags] or ["none of " + " ".join(SPEED_FLAGS)]
    line = f"{cpu_name()} ({os.cpu_count()} cores): {' '.join(present)}"
    changed = [f"{env}={os.environ[env]}" for env in (HIDE_CPU_FLAGS_ENV, ADD_CPU_FLAGS_ENV) if os.environ.get(env)]
    return line + (f" (as seen with {', '.join(changed)})" if changed else "")
