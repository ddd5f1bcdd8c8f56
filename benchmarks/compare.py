"""medclf side by side with what people would use instead, on one split, one after another, on this machine.

python benchmarks/compare.py [--data F] [--max-length 256] [--epochs 3] [--quick] [--out DIR] [--model M]
python benchmarks/compare.py --speed [--steps 40] [--data F] [--max-length 256] [--quick] [--out DIR] [--model M]

Default data: ../shared/data/medical-abstracts/medical_tc_test.csv with its README's protocol
(stratified 80/20 split, seed 42). Each system runs in its own process (so its wall time and peak
RSS are its own), in this order:

  a. `medclf train` with its defaults (+ `--test-data` = the test part), then `medclf predict` on the test part;
  b. `medclf train --method embeddings` (logistic regression on frozen mean-pooled embeddings);
  c. the Hugging Face Trainer reference (reference_trainer.py: lr 2e-5, batch 16, --epochs, --max-length);
  d. the tutorial recipe (reference_tutorial.py: pad to 512, Adam 2e-5, batch 16), throughput over a
     fixed number of steps (--tutorial-full for the whole run, hours on a laptop CPU);
  e. TF-IDF + logistic regression;
  f. inference on the test texts with medclf's fine-tuned weights: TextClassifier vs transformers.pipeline
     (batch 32) vs the tutorial's padded loop (bench_inference.py).

Then it measures this machine's matmul throughput at the encoder's shapes and prints one markdown
table, the limit it implies, and the speed and accuracy targets against the Trainer; everything also goes to DIR/results.json
and DIR/results.md. --quick takes a stratified sample of a few hundred rows and one epoch; with a
tiny --model it is the suite's smoke test.

--speed compares precisions and backends instead, on the same split, each system in its own process:
  1. `medclf train --max-steps N --batch-size 16` at --precision fp32 and bf16 (its whole command: probe, calibration,
     intervals, TF-IDF baseline, report) and reference_trainer.py --max-steps N at fp32 and with --bf16, interleaved
     (medclf fp32, Trainer fp32, medclf bf16, Trainer bf16);
  2. `medclf export` of the run trained at medclf's default precision on this CPU (its own self-check, int8 recipes);
  3. inference on the test part: TextClassifier fp32, bf16, ONNX fp32, ONNX int8 and `pipeline` fp32, bf16 (batch 32)
     (bench_inference.py), each compared with TextClassifier fp32: share of identical top labels, largest
     probability difference.
It prints the CPU flags it ran on (bench_common.cpu_flags_line), one table each for training and inference and the
targets of an AMX Xeon; DIR/results.json and DIR/results.md as above.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helper modules beside this script, also when imported from elsewhere
from bench_common import (  # noqa: E402
    DEFAULT_DATA,
    agreement,
    cpu_flags_line,
    cpu_name,
    read_json,
    read_predictions,
    timed,
    write_results,
    write_split,
)

# Figures of the first side-by-side run that this run does not re-measure (the best Trainer setting was a second, 31-minute run).
TRAINER_BEST_MACRO_F1_LR5E5 = 0.604
F1_FLOOR = 0.61


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="labelled table (default: medical abstracts)")
    parser.add_argument("--text-column", default=None, help="default: medical_abstract for the default data, else text")
    parser.add_argument("--label-column", default=None, help="default: condition_label for the default data, else label")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs of the Trainer reference and the tutorial (medclf runs its own defaults)")
    parser.add_argument("--quick", action="store_true", help="a few hundred rows, one epoch (smoke test)")
    parser.add_argument("--quick-rows", type=int, default=300)
    parser.add_argument("--model", default="default", help="encoder for every system: 'default' or a model directory")
    parser.add_argument("--tutorial-steps", type=int, default=None, help="timed tutorial steps (default 8; quick 2)")
    parser.add_argument("--tutorial-full", action="store_true", help="run the tutorial's full training (hours)")
    parser.add_argument("--out", default=None, help="output directory (default bench-out/compare-<time>)")
    parser.add_argument("--speed", action="store_true", help="precisions and backends (see above) instead of the systems")
    parser.add_argument("--steps", type=int, default=None, help="--speed: training steps of each system (default 40; quick 2)")
    parser.add_argument("--render", default=None, metavar="DIR", help="only re-print DIR/results.json as the table")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads((Path(args.render) / "results.json").read_text(encoding="utf-8"))
        text = render(results)
        (Path(args.render) / "results.md").write_text(text, encoding="utf-8")
        print(text)
        return results
    default_data = Path(args.data).resolve() == DEFAULT_DATA.resolve()
    text_column = args.text_column or ("medical_abstract" if default_data else "text")
    label_column = args.label_column or ("condition_label" if default_data else "label")
    epochs = 1 if args.quick else args.epochs
    tutorial_steps = args.tutorial_steps or (2 if args.quick else 8)
    out = Path(args.out or f"bench-out/compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)

    split = write_split(args.data, text_column, label_column, out / "split", quick=args.quick, quick_rows=args.quick_rows)
    if args.speed:
        return speed(args, out, split, argv)
    train_csv, test_csv = str(out / "split" / "train.csv"), str(out / "split" / "test.csv")
    py = sys.executable
    model_args = ["--model", args.model]
    runs: dict[str, dict[str, Any]] = {}

    medclf_run = out / "medclf-run"
    medclf_train = [py, "-m", "medclf", "--quiet", "train", "--data", train_csv, "--text-column", "text",
                    "--label-column", "label", "--test-data", test_csv, "--max-length", str(args.max_length),
                    "--overwrite", *model_args]
    runs["medclf"] = timed("medclf", medclf_train + ["--output", str(medclf_run)] + (["--epochs", "1"] if args.quick else []), out)
    predictions = out / "medclf-predictions.csv"
    runs["medclf-predict"] = timed("medclf-predict", [py, "-m", "medclf", "--quiet", "predict", str(medclf_run), "--input",
                                                      test_csv, "--text-column", "text", "--output", str(predictions)], out)
    emb_run = out / "medclf-embeddings-run"
    runs["medclf-embeddings"] = timed("medclf-embeddings", medclf_train + ["--output", str(emb_run), "--method", "embeddings"], out)
    runs["trainer"] = timed("trainer", [py, str(HERE / "accuracy" / "reference_trainer.py"), "--train", train_csv, "--test", test_csv,
                                        "--epochs", str(epochs), "--max-length", str(args.max_length),
                                        "--result", str(out / "trainer.json"), *model_args], out)
    tutorial_mode = ["--full", "--epochs", str(epochs)] if args.tutorial_full else ["--steps", str(tutorial_steps), "--epochs", str(epochs)]
    runs["tutorial"] = timed("tutorial", [py, str(HERE / "accuracy" / "reference_tutorial.py"), "--train", train_csv, "--test", test_csv,
                                          *tutorial_mode, "--result", str(out / "tutorial.json"), *model_args], out)
    runs["tfidf"] = timed("tfidf", [py, str(HERE / "accuracy" / "reference_tfidf.py"), "--train", train_csv, "--test", test_csv,
                                    "--result", str(out / "tfidf.json")], out)
    for system in ("medclf", "pipeline", "tutorial"):
        extra = ["--check-unbatched"] if system == "medclf" else []
        runs[f"infer-{system}"] = timed(f"infer-{system}", [py, str(HERE / "speed" / "bench_inference.py"), "--system", system,
                                                            "--run", str(medclf_run), "--test", test_csv, *extra,
                                                            "--result", str(out / f"infer-{system}.json")], out)

    rows = build_rows(out, runs, test_csv, predictions)
    roofline = measure_roofline(medclf_run / "model", rows)
    targets = check_targets(rows, roofline)
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "data": {"file": str(args.data), "text_column": text_column, "label_column": label_column, **split},
        "settings": {"max_length": args.max_length, "epochs_reference": epochs, "quick": args.quick,
                     "model": args.model, "tutorial_steps": None if args.tutorial_full else tutorial_steps},
        "rows": rows,
        "roofline": roofline,
        "targets": targets,
    }
    return write_results(out, results, render)


def build_rows(out: Path, runs: dict[str, dict[str, Any]], test_csv: str, predictions: Path) -> list[dict[str, Any]]:
    import pandas as pd
    from bench_common import read_split, scores

    _, gold = read_split(test_csv)
    predicted = pd.read_csv(predictions, dtype={"label": str}, keep_default_na=False)["label"].astype(str).tolist()
    fine = read_json(out / "medclf-run" / "metrics.json")
    emb = read_json(out / "medclf-embeddings-run" / "metrics.json")
    trainer, tutorial, tfidf = (read_json(out / f"{n}.json") for n in ("trainer", "tutorial", "tfidf"))
    infer = {s: read_json(out / f"infer-{s}.json") for s in ("medclf", "pipeline", "tutorial")}

    def medclf_row(system: str, metrics: dict[str, Any], run: dict[str, Any], what: str, **extra: Any) -> dict[str, Any]:
        timing = metrics["timing"]
        return {
            "system": system, "what": what,
            **{k: metrics["test"][k] for k in ("accuracy", "macro_f1")},
            "train_seconds": run["wall_seconds"], "train_loop_seconds": timing["train_seconds"],
            "train_samples_per_second": timing["train_samples_per_second"],
            "inference_samples_per_second": None, "peak_rss_gib": run["peak_rss_gib"],
            "train_mean_tokens": _mean_tokens(metrics, "train"), **extra,
        }

    fine_row = medclf_row("medclf", fine, runs["medclf"], "medclf train (defaults), then medclf predict",
                          best_epoch=fine["best_epoch"], selected=fine.get("selected"), epochs_run=len(fine["history"]),
                          predict_seconds=runs["medclf-predict"]["wall_seconds"])
    fine_row.update(scores(gold, predicted))  # scored from `medclf predict` output, as a user would
    fine_row["matches_run_metrics"] = abs(fine_row["macro_f1"] - fine["test"]["macro_f1"]) < 1e-9
    rows = [
        fine_row,
        medclf_row("medclf --method embeddings", emb, runs["medclf-embeddings"],
                   "logistic regression on frozen mean-pooled embeddings", chosen_C=emb["timing"].get("chosen_C")),
        {"system": "HF Trainer", "what": f"reference_trainer.py, lr {trainer['lr']}, {trainer['epochs']:g} epochs, fp32",
         "accuracy": trainer["accuracy"], "macro_f1": trainer["macro_f1"], "train_seconds": runs["trainer"]["wall_seconds"],
         "train_loop_seconds": trainer["train_loop_seconds"], "train_samples_per_second": trainer["train_samples_per_second"],
         "inference_samples_per_second": None, "peak_rss_gib": runs["trainer"]["peak_rss_gib"]},
        {"system": "tutorial", "what": f"reference_tutorial.py, pad to 512, Adam 2e-5, fp32; {tutorial['mode']}",
         "accuracy": tutorial["accuracy"], "macro_f1": tutorial["macro_f1"],
         "train_seconds": tutorial.get("train_seconds_projected") or runs["tutorial"]["wall_seconds"],
         "train_seconds_projected": "train_seconds_projected" in tutorial,
         "train_loop_seconds": tutorial["train_loop_seconds"], "train_samples_per_second": tutorial["train_samples_per_second"],
         "inference_samples_per_second": None, "peak_rss_gib": runs["tutorial"]["peak_rss_gib"]},
        {"system": "TF-IDF + LR", "what": "reference_tfidf.py, word 1-2-grams, C=10",
         "accuracy": tfidf["accuracy"], "macro_f1": tfidf["macro_f1"], "train_seconds": runs["tfidf"]["wall_seconds"],
         "train_loop_seconds": tfidf["train_loop_seconds"], "train_samples_per_second": tfidf["train_samples_per_second"],
         "inference_samples_per_second": tfidf["inference_samples_per_second"], "peak_rss_gib": runs["tfidf"]["peak_rss_gib"]},
    ]
    names = {"medclf": "medclf TextClassifier", "pipeline": "transformers pipeline", "tutorial": "tutorial loop"}
    for system, r in infer.items():
        row = {"system": names[system], "what": f"inference, batch {r['batch_size']}, fp32",
               "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "train_seconds": None, "train_loop_seconds": None,
               "train_samples_per_second": None, "inference_samples_per_second": r["inference_samples_per_second"],
               "peak_rss_gib": runs[f"infer-{system}"]["peak_rss_gib"]}
        if system == "medclf":
            row["identical_to_unbatched"] = r["identical_to_unbatched"]
            row["max_prob_diff_unbatched"] = r["max_prob_diff_unbatched"]
        rows.append(row)
    ref = rows[2]
    pipe = next(r for r in rows if r["system"] == "transformers pipeline")
    for row in rows:
        row["train_seconds_vs_trainer"] = _ratio(row["train_seconds"], ref["train_seconds"])
        row["train_samples_per_second_vs_trainer"] = _ratio(row["train_samples_per_second"], ref["train_samples_per_second"])
        row["macro_f1_vs_trainer"] = _ratio(row["macro_f1"], ref["macro_f1"])
        row["peak_rss_vs_trainer"] = _ratio(row["peak_rss_gib"], ref["peak_rss_gib"])
        row["inference_vs_pipeline"] = _ratio(row["inference_samples_per_second"], pipe["inference_samples_per_second"])
    return rows


def _mean_tokens(metrics: dict[str, Any], part: str) -> float | None:
    t = metrics.get("data", {}).get("truncation", {}).get(part)
    return t.get("mean_tokens_kept") if t else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# ---------------------------------------------------------------- the limit


def measure_roofline(model_dir: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Matmul GFLOP/s at the encoder's shapes, the FLOPs of one sample, and each system's share of the limit."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    fine = rows[0]
    infer_tokens = _test_tokens_kept(model_dir)
    train_tokens = fine.get("train_mean_tokens") or infer_tokens

    def forward_gflop(tokens: float) -> float:
        per_layer = 2 * tokens * (4 * d * d + 2 * d * f) + 4 * tokens * tokens * d
        return (layers * per_layer + 2 * d * d) / 1e9

    def gflops(dtype: torch.dtype, rows_m: int) -> float:
        shapes = [(d, d)] * 4 + [(d, f), (f, d)]
        xs = {k: torch.randn(rows_m, k, dtype=dtype) for k in {d, f}}
        ws = [torch.randn(n, k, dtype=dtype) for k, n in shapes]
        for _ in range(3):
            for (k, _n), w in zip(shapes, ws, strict=True):
                torch.nn.functional.linear(xs[k], w)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for (k, _n), w in zip(shapes, ws, strict=True):
                torch.nn.functional.linear(xs[k], w)
            best = min(best, time.perf_counter() - start)
        flop = sum(2 * rows_m * k * n for k, n in shapes)
        return flop / best / 1e9

    m = int(16 * round(infer_tokens))
    fp32 = gflops(torch.float32, m)
    bf16 = None
    try:
        from medclf.model.modeling import choose_precision

        if choose_precision("auto", torch.device("cpu")).name == "bf16":
            bf16 = gflops(torch.bfloat16, m)
    except Exception:  # noqa: BLE001 - the bf16 figure is informative only
        bf16 = None
    f_inf, f_train = forward_gflop(infer_tokens), 3 * forward_gflop(train_tokens)
    limits = {
        "inference_fp32": fp32 / f_inf,
        "training_fp32": fp32 / f_train,
        "training_bf16": bf16 / f_train if bf16 else None,
    }
    shares = {}
    for row in rows:
        if row["system"] in ("medclf", "HF Trainer", "tutorial") and row["train_samples_per_second"]:
            shares[f"{row['system']} training / fp32 limit"] = row["train_samples_per_second"] / limits["training_fp32"]
            if row["system"] == "medclf" and limits["training_bf16"]:
                shares["medclf training / bf16 limit"] = row["train_samples_per_second"] / limits["training_bf16"]
        if row["inference_samples_per_second"] and row["system"] != "TF-IDF + LR":
            shares[f"{row['system']} inference / fp32 limit"] = row["inference_samples_per_second"] / limits["inference_fp32"]
    return {
        "matmul_gflops_fp32": fp32, "matmul_gflops_bf16": bf16, "matmul_rows": m,
        "shapes": f"x[{m}, k] @ w[k, n] for (k, n) in 4x({d},{d}), ({d},{f}), ({f},{d}) (the {layers} layers' linear maps, batch 16)",
        "infer_tokens": infer_tokens, "train_tokens": train_tokens,
        "gflop_per_inference_sample": f_inf, "gflop_per_training_sample": f_train,
        "best_samples_per_second": limits, "shares": shares,
    }


def _test_tokens_kept(model_dir: Path) -> float:
    metrics = read_json(model_dir.parent / "metrics.json")
    t = metrics["data"]["truncation"]["test"]
    return float(t["mean_tokens_kept"])


# ---------------------------------------------------------------- verdict and table


def check_targets(rows: list[dict[str, Any]], roofline: dict[str, Any]) -> list[dict[str, Any]]:
    by = {r["system"]: r for r in rows}
    m, tr, emb = by["medclf"], by["HF Trainer"], by["medclf --method embeddings"]
    mi, pipe, tut = by["medclf TextClassifier"], by["transformers pipeline"], by["tutorial loop"]
    f1_needed = max(tr["macro_f1"], TRAINER_BEST_MACRO_F1_LR5E5, emb["macro_f1"], F1_FLOOR)
    inf_share = roofline["shares"].get("medclf TextClassifier inference / fp32 limit", 0.0)
    checks = [
        ("medclf training wall time <= 2/3 of the Trainer's", m["train_seconds"] / tr["train_seconds"], 2 / 3, "<="),
        ("medclf macro-F1 >= best Trainer setting, embeddings LR and 0.61", m["macro_f1"], f1_needed, ">="),
        ("medclf peak RSS while training <= the Trainer's", m["peak_rss_gib"], tr["peak_rss_gib"], "<="),
        ("medclf inference >= 1.2x pipeline", mi["inference_samples_per_second"] / pipe["inference_samples_per_second"], 1.2, ">="),
        ("medclf inference >= 2x the tutorial loop", mi["inference_samples_per_second"] / tut["inference_samples_per_second"], 2.0, ">="),
        ("medclf inference >= 75% of the fp32 limit", inf_share, 0.75, ">="),
        ("medclf batched predictions identical to unbatched", float(mi["identical_to_unbatched"]), 1.0, ">="),
    ]
    return [{"target": name, "value": value, "bound": bound, "met": value <= bound if op == "<=" else value >= bound}
            for name, value, bound, op in checks]


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def render(results: dict[str, Any]) -> str:
    """The markdown table of a results.json (either mode)."""
    return render_speed(results) if results.get("mode") == "speed" else render_systems(results)


def render_systems(results: dict[str, Any]) -> str:
    mach, roof = results["machine"], results["roofline"]
    lines = [
        f"Benchmark {results['date']} on {mach['cpu']} ({mach['cores']} cores, torch {mach['torch']}, "
        f"{mach['threads']} threads); data {Path(results['data']['file']).name}: {results['data']['split']}, "
        f"{results['data']['n_train']} train / {results['data']['n_test']} test.",
        "",
        "| system | accuracy | macro-F1 | train wall (s) | train samples/s | infer samples/s | peak RSS (GiB) "
        "| wall vs Trainer | samples/s vs Trainer | infer vs pipeline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        wall = _fmt(r["train_seconds"], ".0f") + (" (projected)" if r.get("train_seconds_projected") else "")
        lines.append(
            f"| {r['system']} | {_fmt(r['accuracy'], '.3f')} | {_fmt(r['macro_f1'], '.3f')} | {wall} | "
            f"{_fmt(r['train_samples_per_second'], '.2f')} | {_fmt(r['inference_samples_per_second'], '.1f')} | "
            f"{_fmt(r['peak_rss_gib'], '.2f')} | {_fmt(r['train_seconds_vs_trainer'], '.2f')} | "
            f"{_fmt(r['train_samples_per_second_vs_trainer'], '.2f')} | {_fmt(r['inference_vs_pipeline'], '.2f')} |"
        )
    limits = roof["best_samples_per_second"]
    bf16 = (f", bf16 {roof['matmul_gflops_bf16']:.0f} GFLOP/s (training limit {limits['training_bf16']:.1f} samples/s)"
            if roof["matmul_gflops_bf16"] else "")
    lines += [
        "",
        f"Limit: matmul at the encoder's shapes runs at {roof['matmul_gflops_fp32']:.0f} GFLOP/s fp32{bf16}. "
        f"One sample costs {roof['gflop_per_inference_sample']:.2f} GFLOP to classify ({roof['infer_tokens']:.0f} tokens) "
        f"and {roof['gflop_per_training_sample']:.2f} GFLOP to train on ({roof['train_tokens']:.0f} tokens, forward + backward), "
        f"so this machine allows at best {limits['inference_fp32']:.1f} inference and {limits['training_fp32']:.1f} "
        "training samples/s in fp32.",
        "Share of the limit: " + "; ".join(f"{k} {v:.0%}" for k, v in roof["shares"].items()) + ".",
        "",
        "How to read it: *train wall* is the whole training command (loading, tokenizing, any probe and "
        "validation, predicting the test part, saving), except the tutorial row, which is its training loop "
        "projected from the timed steps to the full epochs. *train samples/s* is each system's own count over "
        "its training loop. *wall vs Trainer* below 1 and *samples/s vs Trainer* above 1 mean faster than the "
        "Trainer reference; *infer vs pipeline* above 1 means faster than `transformers.pipeline`. Shares of the "
        "limit count useful work at the measured mean token count, so padding shows up as a lower share.",
        "",
        "Targets (speed and accuracy against the Trainer):",
    ]
    for t in results["targets"]:
        lines.append(f"- [{'x' if t['met'] else ' '}] {t['target']}: {t['value']:.3f} (bound {t['bound']:.3f})")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- --speed: precisions and backends


SPEED_INFERENCE = (  # (row name, bench_inference.py arguments, the row it is compared with: its own system's fp32)
    ("TextClassifier fp32", ["--system", "medclf", "--dtype", "fp32"], "TextClassifier fp32"),
    ("TextClassifier bf16", ["--system", "medclf", "--dtype", "bf16"], "TextClassifier fp32"),
    ("TextClassifier ONNX fp32", ["--system", "medclf", "--backend", "onnx"], "TextClassifier fp32"),
    ("TextClassifier ONNX int8", ["--system", "medclf", "--backend", "onnx-int8"], "TextClassifier fp32"),
    ("pipeline fp32", ["--system", "pipeline", "--dtype", "fp32"], "pipeline fp32"),
    ("pipeline bf16", ["--system", "pipeline", "--dtype", "bf16"], "pipeline fp32"),
)


def speed(args: argparse.Namespace, out: Path, split: dict[str, Any], argv: list[str] | None) -> dict[str, Any]:
    """--speed: training at fp32 and bf16 for --steps steps (medclf's whole command and the Trainer's, interleaved),
    then inference on the test part by TextClassifier (fp32, bf16, ONNX fp32, ONNX int8) and `pipeline` (fp32, bf16),
    each system in its own process, every prediction compared with its own system's at fp32."""
    import torch

    from medclf.model.modeling import choose_precision, inference_precision

    py, steps = sys.executable, args.steps or (2 if args.quick else 40)
    train_csv, test_csv = str(out / "split" / "train.csv"), str(out / "split" / "test.csv")
    cpu = torch.device("cpu")
    default_train = choose_precision("auto", cpu).name
    default_infer = inference_precision("auto", cpu).name
    runs: dict[str, dict[str, Any]] = {}
    for precision in ("fp32", "bf16"):
        runs[f"medclf-{precision}"] = timed(f"medclf-{precision}", [
            py, "-m", "medclf", "--quiet", "train", "--data", train_csv, "--text-column", "text", "--label-column", "label",
            "--test-data", test_csv, "--max-length", str(args.max_length), "--batch-size", "16", "--max-steps", str(steps),
            "--precision", precision, "--model", args.model, "--output", str(out / f"medclf-{precision}"), "--overwrite"], out)
        runs[f"trainer-{precision}"] = timed(f"trainer-{precision}", [
            py, str(HERE / "accuracy" / "reference_trainer.py"), "--train", train_csv, "--test", test_csv,
            "--max-steps", str(steps), "--max-length", str(args.max_length), "--model", args.model,
            *(["--bf16"] if precision == "bf16" else []), "--result", str(out / f"trainer-{precision}.json")], out)
    run = out / f"medclf-{default_train}"  # the weights a user gets from `medclf train` on this machine
    runs["export"] = timed("export", [py, "-m", "medclf", "--quiet", "export", str(run)], out)
    exported = read_json(run / "onnx" / "export.json")
    inference: list[dict[str, Any]] = []
    def key(name: str) -> str:
        return name.lower().replace(" ", "-")

    for name, extra, reference in SPEED_INFERENCE:
        if "int8" in name and not (run / "onnx" / "model.int8.onnx").is_file():
            inference.append({"system": name, "skipped": exported["check"].get("int8_skipped") or "no int8 model written"})
            continue
        runs[key(name)] = timed(key(name), [
            py, str(HERE / "speed" / "bench_inference.py"), "--run", str(run), "--test", test_csv, "--device", "cpu",
            *extra, "--result", str(out / f"{key(name)}.json"), "--predictions", str(out / "predictions" / f"{key(name)}.csv")], out)
        r = read_json(out / f"{key(name)}.json")
        inference.append({"system": name, "precision": r["precision"], "batch_size": r["batch_size"],
                          "texts_per_second": r["inference_samples_per_second"], "accuracy": r["accuracy"],
                          "macro_f1": r["macro_f1"], "peak_rss_gib": runs[key(name)]["peak_rss_gib"],
                          "default": name == f"TextClassifier {default_infer}", "compared_with": reference,
                          **agreement(read_predictions(out / "predictions" / f"{key(reference)}.csv"),
                                      read_predictions(out / "predictions" / f"{key(name)}.csv"))})
    auto = _auto_backend(run)
    training = speed_training_rows(out, runs, default_train)
    results = {
        "mode": "speed",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(), "cpu_flags": cpu_flags_line(),
        "defaults": {"train_precision": default_train, "inference_precision": default_infer,
                     "backend_auto": auto},
        "data": {"file": str(args.data), **split},
        "settings": {"max_length": args.max_length, "steps": steps, "batch_size": 16, "quick": args.quick,
                     "model": args.model},
        "int8": {k: exported["check"].get(k) for k in ("int8_recipe", "int8_agreement", "int8_tried", "int8_skipped")},
        "training": training,
        "inference": _ratios(inference),
    }
    results["targets"] = speed_targets(results)
    return write_results(out, results, render)


def speed_training_rows(out: Path, runs: dict[str, dict[str, Any]], default: str) -> list[dict[str, Any]]:
    rows = []
    trainer = {p: read_json(out / f"trainer-{p}.json") for p in ("fp32", "bf16")}
    for precision in ("fp32", "bf16"):
        metrics = read_json(out / f"medclf-{precision}" / "metrics.json")
        rows.append({"system": f"medclf {precision}", "default": precision == default,
                     "loop_samples_per_second": metrics["timing"]["train_samples_per_second"],
                     "command_seconds": runs[f"medclf-{precision}"]["wall_seconds"],
                     "macro_f1": metrics["test"]["macro_f1"], "peak_rss_gib": runs[f"medclf-{precision}"]["peak_rss_gib"]})
    for precision in ("fp32", "bf16"):
        r = trainer[precision]
        rows.append({"system": f"HF Trainer {precision}", "default": False,
                     "loop_samples_per_second": r["train_samples_per_second"],
                     "command_seconds": runs[f"trainer-{precision}"]["wall_seconds"], "macro_f1": r["macro_f1"],
                     "peak_rss_gib": runs[f"trainer-{precision}"]["peak_rss_gib"]})
    ref = rows[3]  # the Trainer with bf16=True: what a careful user turns on
    for row in rows:
        row["loop_vs_trainer_bf16"] = _ratio(row["loop_samples_per_second"], ref["loop_samples_per_second"])
        row["command_vs_trainer_bf16"] = _ratio(row["command_seconds"], ref["command_seconds"])
    return rows


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["system"]: r for r in rows}
    pipe, torch_bf16 = by["pipeline bf16"].get("texts_per_second"), by["TextClassifier bf16"].get("texts_per_second")
    for row in rows:
        row["vs_pipeline_bf16"] = _ratio(row.get("texts_per_second"), pipe)
        row["vs_textclassifier_bf16"] = _ratio(row.get("texts_per_second"), torch_bf16)
    return rows


def _auto_backend(run: Path) -> str:
    from medclf.config import LoadOptions
    from medclf.inference.classifier import TextClassifier

    return TextClassifier.load(run, LoadOptions(backend="auto", device="cpu")).backend


def speed_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets an AMX Xeon is held to (on other CPUs they are printed, and read as what this CPU does)."""
    train = {r["system"]: r for r in results["training"]}
    infer = {r["system"]: r for r in results["inference"]}
    default_train = train[f"medclf {results['defaults']['train_precision']}"]
    default_infer = next(r for r in results["inference"] if r["default"])
    int8 = infer["TextClassifier ONNX int8"]
    checks = [
        ("medclf training loop (default precision) >= 3x the Trainer's with bf16", default_train["loop_vs_trainer_bf16"], 3.0, ">="),
        ("medclf whole command (default precision) <= 0.7x the Trainer script's with bf16",
         default_train["command_vs_trainer_bf16"], 0.7, "<="),
        ("TextClassifier default >= 2x pipeline bf16", default_infer["vs_pipeline_bf16"], 2.0, ">="),
        ("TextClassifier default agrees with fp32 on >= 99.5% of top labels", default_infer["top_label_agreement"], 0.995, ">="),
        ("ONNX int8 >= 1.5x TextClassifier bf16", int8.get("vs_textclassifier_bf16"), 1.5, ">="),
        ("ONNX int8 agrees with fp32 on >= 99% of top labels", int8.get("top_label_agreement"), 0.99, ">="),
    ]
    return [{"target": name, "value": value, "bound": bound,
             "met": value is not None and (value <= bound if op == "<=" else value >= bound)}
            for name, value, bound, op in checks]


def _backend_auto_row(defaults: dict[str, Any]) -> str:
    """The inference row of what predict and serve use after `medclf export` (LoadOptions backend auto)."""
    return {"torch": f"TextClassifier {defaults['inference_precision']}", "onnx": "TextClassifier ONNX fp32",
            "onnx-int8": "TextClassifier ONNX int8"}[defaults["backend_auto"]]


def render_speed(results: dict[str, Any]) -> str:
    mach, s, d = results["machine"], results["settings"], results["defaults"]
    auto_row = _backend_auto_row(d)
    lines = [
        f"Precisions and backends, {results['date']}: {results['cpu_flags']}; torch {mach['torch']}, {mach['threads']} "
        f"threads. Data {Path(results['data']['file']).name}: {results['data']['split']}, {results['data']['n_train']} "
        f"train / {results['data']['n_test']} test; max length {s['max_length']}, batch {s['batch_size']}, {s['steps']} steps.",
        f"medclf's defaults on this CPU: training {d['train_precision']}, inference {d['inference_precision']}, "
        f"after `medclf export`, backend auto = {d['backend_auto']} (* marks the defaults before export, "
        "+ what predict and serve use after it).",
        "",
        "| training | loop samples/s | vs Trainer bf16 | whole command (s) | vs Trainer bf16 | macro-F1 | peak RSS (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["training"]:
        lines.append(f"| {r['system']}{' *' if r['default'] else ''} | {_fmt(r['loop_samples_per_second'], '.2f')} | "
                     f"{_fmt(r['loop_vs_trainer_bf16'], '.2f')} | {_fmt(r['command_seconds'], '.1f')} | "
                     f"{_fmt(r['command_vs_trainer_bf16'], '.2f')} | {_fmt(r['macro_f1'], '.3f')} | "
                     f"{_fmt(r['peak_rss_gib'], '.2f')} |")
    lines += ["", "| inference on the test part | texts/s | vs pipeline bf16 | vs TextClassifier bf16 | top label = its fp32 "
              "| max prob diff | macro-F1 |", "|---|---|---|---|---|---|---|"]
    for r in results["inference"]:
        if "skipped" in r:
            lines.append(f"| {r['system']} | not measured: {r['skipped']} | | | | | |")
            continue
        marks = (" *" if r["default"] else "") + (" +" if r["system"] == auto_row else "")
        lines.append(f"| {r['system']}{marks} | {r['texts_per_second']:.1f} | "
                     f"{_fmt(r['vs_pipeline_bf16'], '.2f')} | {_fmt(r['vs_textclassifier_bf16'], '.2f')} | "
                     f"{r['top_label_agreement']:.2%} | {_fmt(r['max_prob_diff'], '.2g')} | {r['macro_f1']:.3f} |")
    i8 = results["int8"]
    lines += [
        "",
        f"int8 export: recipe {i8['int8_recipe'] or 'none'}"
        + (f", {i8['int8_agreement']:.1%} agreement on its check texts" if i8["int8_agreement"] is not None else "")
        + (f" ({i8['int8_skipped']})" if i8["int8_skipped"] else "") + ".",
        "How to read it: the loop figures are each system's own samples/s over its training loop; the whole command "
        "is `medclf train` (probe, calibration, intervals, TF-IDF baseline, report included) against the Trainer script "
        "(tokenizing, training, predicting the test part). Inference is timed after a warm-up, tokenization included; "
        "top label = its fp32 is the share of test texts whose top label equals that of the same system at fp32 "
        "(TextClassifier fp32 for the ONNX rows). TextClassifier and pipeline differ at fp32 too where a text is longer "
        "than the max length: medclf keeps its head and tail (the run's --long-text), the pipeline only its head.",
        "",
        "Targets (stated for an AMX Xeon; elsewhere they read as what this CPU does):",
    ]
    for t in results["targets"]:
        value = "not measured" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"- [{'x' if t['met'] else ' '}] {t['target']}: {value} (bound {t['bound']:.3f})")
    lines.append("")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


if __name__ == "__main__":
    main()
