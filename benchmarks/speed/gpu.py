"""medclf on a GPU, side by side with the Hugging Face Trainer (bf16) and `transformers.pipeline`, one after another on
the same card, each system in its own process.

    python benchmarks/speed/gpu.py [--data F] [--out DIR] [--model default] [--quick]

On the medical-abstracts protocol split (stratified 80/20, seed 42: 2,310 / 578; `$MEDCLF_DATA` names the data folder
where ../shared/data is not beside the project, as on the device machine):
1. `medclf train` (its defaults: bf16 autocast on the card) at max length 256, batch 16: its training-loop samples/s
   and peak GPU memory from its metrics.json, the whole command's wall time from here.
2. `medclf predict` on the whole corpus (2,888 abstracts): the whole command's wall time.
3. `TextClassifier` inference on the corpus repeated `--repeat` times (default 4: 11,552 texts), batches by medclf's
   device plan, bf16 autocast; top-label agreement with fp32 on the same texts (bench_inference.py --agreement).
4. reference_trainer.py with `--bf16` (TrainingArguments(bf16=True), DataCollatorWithPadding, lr 2e-5, batch 16).
5. `transformers.pipeline` in bf16 at batch 32 and 128 on the same texts as 3.
6. The card's dense bf16 matmul rate (8192 x 8192, measured here) and each system's share of it, from the encoder's
   FLOPs per text at the mean token count.
Prints one table, writes DIR/results.json, DIR/results.md, each system's JSON and DIR/logs/. Target: under 6 minutes
on an H100. `--quick` (a few hundred rows, 2 epochs, repeat 1) is the CPU smoke test (tests/test_benchmarks.py).

On the device machine: build the bundle here with the packages its image lacks,
`../shared/tools/device-bundle markdown-it-py mdurl prometheus-client`, then run
`source .device-bundle/setup.sh && python benchmarks/speed/gpu.py --out $OUT/gpu` with carry [".device-bundle"].
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import DEFAULT_DATA, read_json, timed, write_results, write_split  # noqa: E402


def default_data() -> Path:
    folder = os.environ.get("MEDCLF_DATA")
    return Path(folder) / "medical-abstracts" / "medical_tc_test.csv" if folder else DEFAULT_DATA


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="labelled table (default: the medical abstracts)")
    parser.add_argument("--text-column", default="medical_abstract")
    parser.add_argument("--label-column", default="condition_label")
    parser.add_argument("--quick-rows", type=int, default=240)
    parser.add_argument("--model", default="default", help="encoder for every system: 'default' or a model directory")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the Trainer reference (medclf: its defaults)")
    parser.add_argument("--repeat", type=int, default=None, help="inference texts: the corpus this many times (4)")
    parser.add_argument("--quick", action="store_true", help="a few hundred rows, 2 epochs (CPU smoke test)")
    parser.add_argument("--out", default=None, help="output directory (default bench-out/gpu-<time>)")
    args = parser.parse_args(argv)
    import torch

    data = Path(args.data) if args.data else default_data()
    out = Path(args.out or f"bench-out/gpu-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    split = write_split(str(data), args.text_column, args.label_column, out / "split", quick=args.quick,
                        quick_rows=args.quick_rows)
    train_csv, test_csv = str(out / "split" / "train.csv"), str(out / "split" / "test.csv")
    corpus = out / "split" / "corpus.csv"  # every row, for inference: train + test
    import pandas as pd

    pd.concat([pd.read_csv(train_csv), pd.read_csv(test_csv)]).to_csv(corpus, index=False)
    repeat = args.repeat or (1 if args.quick else 4)
    epochs = 2 if args.quick else args.epochs
    cuda = torch.cuda.is_available()
    py = sys.executable
    model = ["--model", args.model]
    runs: dict[str, dict[str, Any]] = {}

    run_dir = out / "medclf-run"
    runs["medclf"] = timed("medclf", [py, "-m", "medclf", "--quiet", "train", "--data", train_csv, "--test-data", test_csv,
                                      "--text-column", "text", "--label-column", "label", "--max-length",
                                      str(args.max_length), "--batch-size", "16", "--output", str(run_dir), "--overwrite",
                                      *model, *(["--epochs", str(epochs)] if args.quick else [])], out)
    runs["medclf-predict"] = timed("medclf-predict", [py, "-m", "medclf", "--quiet", "predict", str(run_dir), "--input",
                                                      str(corpus), "--text-column", "text", "--output",
                                                      str(out / "medclf-predictions.csv")], out)
    infer = [py, str(HERE / "bench_inference.py"), "--run", str(run_dir), "--test", str(corpus), "--repeat", str(repeat)]
    runs["infer-medclf"] = timed("infer-medclf", infer + ["--system", "medclf", "--agreement",
                                                          "--result", str(out / "infer-medclf.json")], out)
    runs["trainer"] = timed("trainer", [py, str(BENCH / "accuracy" / "reference_trainer.py"), "--train", train_csv, "--test", test_csv,
                                        "--epochs", str(epochs), "--max-length", str(args.max_length),
                                        *(["--bf16"] if cuda else []), "--result", str(out / "trainer.json"), *model], out)
    for batch in (32, 128):
        runs[f"infer-pipeline-{batch}"] = timed(
            f"infer-pipeline-{batch}", infer + ["--system", "pipeline", "--batch-size", str(batch),
                                                "--dtype", "bf16" if cuda else "fp32",
                                                "--result", str(out / f"infer-pipeline-{batch}.json")], out)
    limit = card_limit(run_dir / "model", cuda=cuda)
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/speed/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "data": {"file": str(data), **split, "inference_texts": len(pd.read_csv(corpus)) * repeat},
        "rows": rows(out, runs, limit),
        "limit": limit,
        "seconds": time.perf_counter() - started,
    }
    return write_results(out, results, render)


def rows(out: Path, runs: dict[str, dict[str, Any]], limit: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per system: the table's columns, from the systems' own JSON and the wall times measured here."""
    metrics, trainer = read_json(out / "medclf-run" / "metrics.json"), read_json(out / "trainer.json")
    gib = 2**30

    def share(texts_per_second: float | None, training: bool) -> float | None:
        best = limit.get("training_texts_per_second" if training else "inference_texts_per_second")
        return texts_per_second / best if texts_per_second and best else None

    timing = metrics["timing"]
    table = [
        {"system": "medclf train", "loop_samples_per_second": timing["train_samples_per_second"],
         "command_seconds": runs["medclf"]["wall_seconds"], "macro_f1": metrics["test"]["macro_f1"],
         "peak_gpu_gib": (timing.get("peak_gpu_memory_bytes") or 0) / gib or None,
         "share_of_limit": share(timing["train_samples_per_second"], True)},
        {"system": "HF Trainer (bf16)" if trainer.get("bf16") else "HF Trainer (fp32)",
         "loop_samples_per_second": trainer["train_samples_per_second"], "command_seconds": runs["trainer"]["wall_seconds"],
         "macro_f1": trainer["macro_f1"], "peak_gpu_gib": (trainer.get("peak_gpu_memory_bytes") or 0) / gib or None,
         "share_of_limit": share(trainer["train_samples_per_second"], True)},
        {"system": "medclf predict (whole command)", "command_seconds": runs["medclf-predict"]["wall_seconds"]},
    ]
    for name, label in (("infer-medclf", "TextClassifier"), ("infer-pipeline-32", "pipeline, batch 32"),
                        ("infer-pipeline-128", "pipeline, batch 128")):
        r = read_json(out / f"{name}.json")
        table.append({"system": f"{label} ({r['precision']})", "inference_texts_per_second": r["inference_samples_per_second"],
                      "macro_f1": r["macro_f1"], "peak_gpu_gib": (r.get("peak_gpu_memory_bytes") or 0) / gib or None,
                      "agreement_with_fp32": r.get("top_label_agreement_with_fp32"),
                      "share_of_limit": share(r["inference_samples_per_second"], False)})
    medclf, ref = table[0], table[1]
    pipe32 = table[4]["inference_texts_per_second"]
    for row in table:
        if row.get("loop_samples_per_second") and ref["loop_samples_per_second"]:
            row["loop_vs_trainer"] = row["loop_samples_per_second"] / ref["loop_samples_per_second"]
        if row.get("command_seconds") and row is medclf:
            row["command_vs_trainer"] = row["command_seconds"] / ref["command_seconds"]
        if row.get("inference_texts_per_second") and pipe32:
            row["inference_vs_pipeline_32"] = row["inference_texts_per_second"] / pipe32
    return table


def card_limit(model_dir: Path, *, cuda: bool) -> dict[str, Any]:
    """The card's dense bf16 matmul rate (fp32 on a CPU) and what it allows per text at the runs' mean token counts."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    metrics = read_json(model_dir.parent / "metrics.json")
    tokens = {part: metrics["data"]["truncation"][part]["mean_tokens_kept"] for part in ("train", "test")}

    def forward_gflop(n: float) -> float:
        return (layers * (2 * n * (4 * d * d + 2 * d * f) + 4 * n * n * d) + 2 * d * d) / 1e9

    device, dtype, size = ("cuda", torch.bfloat16, 8192) if cuda else ("cpu", torch.float32, 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    reps = 20 if cuda else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    tflops = 2 * size**3 * reps / (time.perf_counter() - start) / 1e12
    return {
        "matmul": f"{size}x{size} @ {size}x{size} {str(dtype).replace('torch.', '')} on {device}",
        "matmul_tflops": tflops,
        "mean_tokens": tokens,
        "gflop_per_text_inference": forward_gflop(tokens["test"]),
        "gflop_per_text_training": 3 * forward_gflop(tokens["train"]),
        "inference_texts_per_second": tflops * 1e3 / forward_gflop(tokens["test"]),
        "training_texts_per_second": tflops * 1e3 / (3 * forward_gflop(tokens["train"])),
    }


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def render(results: dict[str, Any]) -> str:
    limit = results["limit"]
    lines = [
        f"# medclf on {results['device']} ({results['date']}; torch {results['versions']['torch']}, "
        f"CUDA {results['versions']['cuda']})",
        "",
        f"`{results['command']}`; data {Path(results['data']['file']).name}: {results['data']['split']}; "
        f"inference on {results['data']['inference_texts']:,} texts. The whole benchmark took {results['seconds']:.0f} s.",
        "",
        "| system | loop samples/s | vs Trainer | whole command (s) | vs Trainer | macro-F1 | peak GPU GiB | "
        "inference texts/s | vs pipeline b32 | top label = fp32 | share of limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['system']} | {_fmt(r.get('loop_samples_per_second'), '.0f')} | {_fmt(r.get('loop_vs_trainer'), '.2f')} | "
            f"{_fmt(r.get('command_seconds'), '.1f')} | {_fmt(r.get('command_vs_trainer'), '.2f')} | "
            f"{_fmt(r.get('macro_f1'), '.3f')} | {_fmt(r.get('peak_gpu_gib'), '.2f')} | "
            f"{_fmt(r.get('inference_texts_per_second'), ',.0f')} | {_fmt(r.get('inference_vs_pipeline_32'), '.2f')} | "
            f"{_fmt(r.get('agreement_with_fp32'), '.4f')} | {_fmt(r.get('share_of_limit'), '.1%')} |")
    lines += ["", f"Limit: {limit['matmul']} ran at {limit['matmul_tflops']:.1f} TFLOP/s; at {limit['mean_tokens']['test']:.0f} "
              f"tokens a text costs {limit['gflop_per_text_inference']:.2f} GFLOP forward, so the card allows "
              f"{limit['inference_texts_per_second']:,.0f} texts/s of inference and "
              f"{limit['training_texts_per_second']:,.0f} samples/s of training (3x forward at "
              f"{limit['mean_tokens']['train']:.0f} tokens)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
