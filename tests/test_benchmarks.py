"""The benchmark scripts still run, end to end on a tiny random model (compare.py --quick: every system runs and the JSON
has every row and field; the others likewise). Marked `bench`: not part of the suite, run by .ci/run after it
(`python3 -m pytest -m bench`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SECRET, make_rows, write_csv

pytestmark = pytest.mark.bench
ROOT = Path(__file__).resolve().parent.parent

TRAINING_ROWS = ["medclf", "medclf --method embeddings", "HF Trainer", "tutorial", "TF-IDF + LR"]
INFERENCE_ROWS = ["medclf TextClassifier", "transformers pipeline", "tutorial loop"]
FIELDS = [
    "system", "what", "accuracy", "macro_f1", "train_seconds", "train_samples_per_second",
    "inference_samples_per_second", "peak_rss_gib", "train_seconds_vs_trainer",
    "train_samples_per_second_vs_trainer", "macro_f1_vs_trainer", "peak_rss_vs_trainer", "inference_vs_pipeline",
]


def test_compare_quick_mode_writes_every_row_and_field(tmp_path, tiny_model):
    data = write_csv(tmp_path / "notes.csv", make_rows(30))
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--quick", "--quick-rows", "60", "--data", str(data),
         "--model", tiny_model, "--max-length", "32", "--tutorial-steps", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = {row["system"]: row for row in results["rows"]}
    assert list(rows) == TRAINING_ROWS + INFERENCE_ROWS
    for row in rows.values():
        assert all(field in row for field in FIELDS), row
    assert results["data"]["n_train"] == 48 and results["data"]["n_test"] == 12
    for name in TRAINING_ROWS:
        assert rows[name]["train_seconds"] > 0 and rows[name]["train_samples_per_second"] > 0
        assert 0 < rows[name]["peak_rss_gib"] < 24
    for name in ["medclf", "medclf --method embeddings", "HF Trainer", "TF-IDF + LR", *INFERENCE_ROWS]:
        assert 0.0 <= rows[name]["accuracy"] <= 1.0 and 0.0 <= rows[name]["macro_f1"] <= 1.0
    assert rows["tutorial"]["train_seconds_projected"] is True  # throughput mode, not a full run
    assert rows["HF Trainer"]["train_seconds_vs_trainer"] == 1.0
    assert rows["transformers pipeline"]["inference_vs_pipeline"] == 1.0
    for name in INFERENCE_ROWS:
        assert rows[name]["inference_samples_per_second"] > 0
    assert rows["medclf"]["matches_run_metrics"] is True  # `medclf predict` agrees with the run's own test figures
    assert rows["medclf TextClassifier"]["identical_to_unbatched"] is True

    roof = results["roofline"]
    assert roof["matmul_gflops_fp32"] > 0 and roof["gflop_per_training_sample"] > roof["gflop_per_inference_sample"] > 0
    assert roof["best_samples_per_second"]["inference_fp32"] > 0
    assert any(key.startswith("medclf TextClassifier inference") for key in roof["shares"])
    assert len(results["targets"]) == 7 and all(isinstance(t["met"], bool) for t in results["targets"])

    table = (out / "results.md").read_text()
    assert proc.stdout.strip() == table.strip()
    assert all(f"| {name} |" in table for name in TRAINING_ROWS + INFERENCE_ROWS)
    assert "Limit:" in table and "Targets" in table
    for path in out.rglob("*"):  # only the split files (the benchmark's input) may hold text
        if path.is_file() and "split" not in path.parts and path.suffix in (".json", ".md", ".log", ".csv", ".txt"):
            assert SECRET not in path.read_text(errors="ignore"), path


def test_compare_speed_mode_runs_each_precision_and_backend_and_compares_each_with_fp32(tmp_path, tiny_model):
    """compare.py --speed --quick: medclf and the Trainer at fp32 and bf16, then every inference system, each in its own
    process; the tables name the CPU flags and mark medclf's defaults; --render prints the same table again."""
    data = write_csv(tmp_path / "notes.csv", make_rows(30))
    out = tmp_path / "speed"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--speed", "--quick", "--quick-rows", "60", "--data",
         str(data), "--model", tiny_model, "--max-length", "32", "--steps", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "speed" and results["settings"]["steps"] == 2
    train = {row["system"]: row for row in results["training"]}
    assert list(train) == ["medclf fp32", "medclf bf16", "HF Trainer fp32", "HF Trainer bf16"]
    default = results["defaults"]["train_precision"]
    assert [name for name, row in train.items() if row["default"]] == [f"medclf {default}"]
    for row in train.values():
        assert row["loop_samples_per_second"] > 0 and row["command_seconds"] > 0 and 0 <= row["macro_f1"] <= 1
    assert train["HF Trainer bf16"]["loop_vs_trainer_bf16"] == 1.0
    for precision in ("fp32", "bf16"):  # each medclf run trained at the precision it was asked for, for 2 steps
        spec = json.loads((out / f"medclf-{precision}" / "train_config.json").read_text())
        metrics = json.loads((out / f"medclf-{precision}" / "metrics.json").read_text())
        assert spec["run"]["precision"] == precision and metrics["timing"]["optimizer_steps"] == 2
    trainer_bf16 = json.loads((out / "trainer-bf16.json").read_text())
    assert trainer_bf16["bf16"] is True

    infer = {row["system"]: row for row in results["inference"]}
    assert list(infer) == ["TextClassifier fp32", "TextClassifier bf16", "TextClassifier ONNX fp32",
                           "TextClassifier ONNX int8", "pipeline fp32", "pipeline bf16"]
    assert infer["TextClassifier fp32"]["top_label_agreement"] == 1.0 and infer["TextClassifier fp32"]["max_prob_diff"] == 0
    assert infer["pipeline fp32"]["top_label_agreement"] == 1.0 and infer["pipeline bf16"]["compared_with"] == "pipeline fp32"
    assert infer["TextClassifier ONNX fp32"]["max_prob_diff"] < 1e-3  # the export's own check holds on the test part
    assert infer["pipeline bf16"]["max_prob_diff"] is None  # the pipeline gives its top label only
    assert results["defaults"]["backend_auto"] in ("torch", "onnx", "onnx-int8")
    table = (out / "results.md").read_text()  # one inference row is marked as what predict uses after export
    assert sum(line.startswith("| TextClassifier") and " +" in line.split("|")[1] for line in table.splitlines()) == 1
    int8 = infer["TextClassifier ONNX int8"]
    if (out / f"medclf-{default}" / "onnx" / "model.int8.onnx").is_file():
        assert int8["texts_per_second"] > 0 and int8["top_label_agreement"] >= 0.0
    else:  # no recipe kept enough predictions: the row says why instead of a figure
        assert int8["skipped"] == results["int8"]["int8_skipped"]
    for name, row in infer.items():
        if "skipped" not in row:
            assert row["texts_per_second"] > 0 and 0 <= row["top_label_agreement"] <= 1, name
            assert row["vs_pipeline_bf16"] > 0
    assert infer["pipeline bf16"]["vs_pipeline_bf16"] == 1.0
    assert len(results["targets"]) == 6 and all(isinstance(t["met"], bool) for t in results["targets"])

    table = (out / "results.md").read_text()
    assert proc.stdout.strip().endswith(table.strip())
    assert results["cpu_flags"] in table and results["cpu_flags"].split(": ")[1] in table  # the CPU and its flags
    assert all(f"| {name}" in table for name in [*train, *infer]) and "Targets" in table
    rendered = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--render", str(out)],
                              capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0 and rendered.stdout.strip() == table.strip()
    for path in out.rglob("*"):  # only the split files (the benchmark's input) may hold text
        if path.is_file() and "split" not in path.parts and path.suffix in (".json", ".md", ".log", ".csv", ".txt"):
            assert SECRET not in path.read_text(errors="ignore"), path


def test_serve_load_runs_one_phase_per_client_count_and_reports_each(tmp_path, trained_run, small_csv):
    out = tmp_path / "load"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serving" / "serve_load.py"), "--run", str(trained_run), "--texts", str(small_csv),
         "--clients", "1,3", "--requests", "40", "--seconds", "120", "--texts-per-request", "1-4",
         "--malformed-share", "0.25", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["offline"]["texts_per_s"] > 0 and result["offline"]["threads"] == 1
    assert result["offline"]["precision"] in ("fp32", "bf16") and "cores)" in result["cpu_flags"]
    assert [p["clients"] for p in result["phases"]] == [1, 3]
    for phase in result["phases"]:
        assert phase["requests_sent"] == 40 and phase["wellformed"] + phase["malformed"] == 40
        assert phase["malformed"] > 3 and phase["malformed_not_4xx"] == 0
        assert phase["wellformed_not_answered_below_500"] == 0
        assert sum(phase["status_counts"].values()) == 40 and phase["status_counts"]["200"] == phase["wellformed"]
        assert phase["wellformed"] <= phase["texts"] <= 4 * phase["wellformed"]  # 1-4 texts a request
        assert phase["texts_per_s"] > 0 and phase["server_cpu_s_per_s"] > 0
        assert 0 < phase["latency_s"]["p50"] <= phase["latency_s"]["p95"] <= phase["latency_s"]["p99"]
        assert phase["mean_texts_per_forward_batch"] >= 1
    assert result["rss_mib"]["before"] > 0
    assert set(result["targets"]) == {"zero 5xx for well-formed requests", "every malformed request answered 4xx",
                                      "server texts/s at 3 clients >= 80% of offline", "RSS after within 10% of before"}
    table = (out / "results.md").read_text()
    assert "| clients |" in table and table.count("\n| 1 |") + table.count("\n| 3 |") == 2
    assert SECRET not in (out / "server.log").read_text() + (out / "results.json").read_text() + table


def test_bench_export_compares_backends_on_the_same_texts(tmp_path, trained_run, small_csv):
    import pandas as pd

    split = tmp_path / "test.csv"
    pd.read_csv(small_csv).rename(columns={"label": "label"})[["text", "label"]].to_csv(split, index=False)
    out = tmp_path / "export"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "speed" / "bench_export.py"), "--run", str(trained_run), "--check", str(small_csv),
         "--test", str(split), "--rounds", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    rows = result["backends"]
    assert {"torch", "onnx"} <= set(rows) and rows["torch"]["speedup_vs_torch"] == 1.0
    assert rows["onnx"]["max_abs_prob_diff"] < 1e-4 and rows["onnx"]["top_label_agreement"] == 1.0
    assert all(r["texts_per_s"] > 0 and 0 <= r["macro_f1"] <= 1 for r in rows.values())
    assert not (trained_run / "onnx").exists(), "the benchmark exports into a copy, never into the given run"


def test_long_docs_builds_the_set_and_compares_the_modes(tmp_path, tiny_model):
    out = tmp_path / "long"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accuracy" / "long_docs.py"), "--quick", "36", "--model", tiny_model, "--epochs", "1",
         "--words", "120", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pandas as pd

    bare, long = pd.read_csv(out / "bare.csv"), pd.read_csv(out / "long.csv")
    assert list(bare["specialty"]) == list(long["specialty"])
    assert all(b in lo and len(lo.split()) >= 120 for b, lo in zip(bare["text"], long["text"]))
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert list(rows) == ["bare", "truncate", "head-tail", "chunk", "chunk-max"]
    assert rows["chunk"]["mean_windows"] > 1 and rows["truncate"]["share_tokens_lost"] > 0.3
    assert rows["bare"]["share_of_bare_macro_f1"] == 1.0
    assert all(r["train_seconds"] > 0 and r["test_inference_seconds"] > 0 for r in rows.values())


def test_multilabel_benchmark_builds_the_set_and_reports_both_thresholds(tmp_path, tiny_model):
    out = tmp_path / "ml"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accuracy" / "multilabel.py"), "--quick", "60", "--model", tiny_model, "--epochs", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pandas as pd

    frame = pd.read_csv(out / "multilabel.csv")
    labels = [set(cell.split("|")) for cell in frame["labels"]]
    assert all(1 <= len(s) <= 2 for s in labels) and any("urgent" in s for s in labels)
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert list(rows) == ["finetune", "embeddings"]
    for row in rows.values():
        assert "urgent" in row["labels"] and set(row["thresholds"]) == set(row["labels"])
        for figures in (row["tuned"], row["fixed_0.5"]):
            assert all(0 <= figures[k] <= 1 for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy"))
    assert "| 0.5 for every label |" in (out / "results.md").read_text()


def test_explain_faithfulness_benchmark_reads_the_test_part_and_reports_both_means(tmp_path, embedding_run):
    out = tmp_path / "faith"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "trust" / "explain_faithfulness.py"), "--run", str(embedding_run), "--texts", "6",
         "--k", "2", "--steps", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["texts"] == 6 and set(result["methods"]) == {"integrated-gradients", "occlusion"}
    for check in result["methods"].values():
        assert check["texts"] == 6 and check["mean_drop_top_k"] is not None and check["seconds_per_text"] > 0


def test_ece_floor_simulates_a_calibrated_model_of_the_same_size(tmp_path, trained_run):
    out = tmp_path / "floor.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "trust" / "ece_floor.py"), "--run", str(trained_run), "--draws",
                           "200", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["draws"] == 200 and 0 <= result["p5"] <= result["median"] <= result["p95"] <= 1


def test_stream_predict_benchmark_measures_each_size(tmp_path, trained_run):
    out = tmp_path / "stream"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed" / "stream_predict.py"), "--run", str(trained_run),
                           "--rows", "300,900", "--in-memory", "300", "--chunk-rows", "200", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["rows"], r["mode"]) for r in rows] == [(300, "streaming"), (900, "streaming"), (300, "one chunk (in memory)")]
    assert all(r["peak_rss_mib"] > 50 and r["rows_per_second"] > 0 for r in rows)


def test_spark_predict_benchmark_compares_the_engines(tmp_path, trained_run):
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java")
    out = tmp_path / "spark"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed" / "spark_predict.py"), "--run", str(trained_run),
                           "--rows", "400", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["same_labels"] is True and set(result["engines"]) == {"local", "spark"}


def test_gpu_benchmark_quick_mode_runs_every_system_and_writes_its_table(tmp_path, tiny_model):
    """benchmarks/speed/gpu.py --quick on the CPU: the run a GPU session makes, on a tiny model, with every row filled."""
    data = write_csv(tmp_path / "notes.csv", make_rows(30))
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "speed" / "gpu.py"), "--quick", "--quick-rows", "60", "--data", str(data),
         "--text-column", "text", "--label-column", "label", "--model", tiny_model, "--max-length", "32",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = {row["system"]: row for row in results["rows"]}
    assert list(rows) == ["medclf train", "HF Trainer (fp32)", "medclf predict (whole command)", "TextClassifier (fp32)",
                          "pipeline, batch 32 (fp32)", "pipeline, batch 128 (fp32)"]
    for name in ("medclf train", "HF Trainer (fp32)"):
        row = rows[name]
        assert row["loop_samples_per_second"] > 0 and row["command_seconds"] > 0 and 0 <= row["macro_f1"] <= 1
        assert row["share_of_limit"] > 0 and row["peak_gpu_gib"] is None  # no GPU here
    assert rows["HF Trainer (fp32)"]["loop_vs_trainer"] == 1.0 and rows["medclf train"]["command_vs_trainer"] > 0
    assert rows["medclf predict (whole command)"]["command_seconds"] > 0
    clf = rows["TextClassifier (fp32)"]
    assert clf["inference_texts_per_second"] > 0 and clf["agreement_with_fp32"] == 1.0  # fp32 on a CPU: itself
    assert rows["pipeline, batch 32 (fp32)"]["inference_vs_pipeline_32"] == 1.0
    assert results["data"]["inference_texts"] == 60 and results["limit"]["matmul_tflops"] > 0
    table = (out / "results.md").read_text()
    assert proc.stdout.strip().endswith(table.strip())
    assert all(f"| {name} |" in table for name in rows) and "Limit:" in table
    for path in out.rglob("*"):  # only the split files (the benchmark's input) may hold text
        if path.is_file() and "split" not in path.parts and path.suffix in (".json", ".md", ".log", ".csv", ".txt"):
            assert SECRET not in path.read_text(errors="ignore"), path


def test_few_labels_rule_benchmark_compares_both_rules_per_seed(tmp_path, tiny_model):
    """A table of 600 rows with one class cut to 9 training rows: the rule before applies, the rule now does not."""
    data = write_csv(tmp_path / "notes.csv", make_rows(200))
    out = tmp_path / "rule"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accuracy" / "few_labels_rule.py"), "--data", str(data), "--text-column", "text",
         "--label-column", "label", "--model", tiny_model, "--seeds", "0", "1", "--extra=--max-length=32",
         "--out", str(out)], capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert [(r["rule"], r["seed"], r["applied"]) for r in result["runs"]] == [
        ("before", 0, True), ("now", 0, False), ("before", 1, True), ("now", 1, False)]
    summary = result["summary"]
    assert summary["before"]["low"] <= summary["before"]["mean"] <= summary["before"]["high"]
    assert "Paired difference now - before" in (out / "results.md").read_text()


def test_subgroups_benchmark_derives_the_slices_and_reports_them(tmp_path, tiny_model):
    """Length thirds and a population slice derived from each text, reported by `medclf train --slice-columns`."""
    rows = make_rows(100)
    for i, row in enumerate(rows):
        row["text"] += " in children" if i % 3 == 0 else ""
    data = write_csv(tmp_path / "notes.csv", rows)
    out = tmp_path / "sg"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "trust" / "subgroups.py"), "--data", str(data), "--text-column", "text",
         "--label-column", "label", "--model", tiny_model, "--method", "embeddings", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    columns = result["subgroups"]["columns"]
    assert list(columns) == ["length", "population"]
    assert {row["value"] for row in columns["population"]} == {"children", "adults or unstated"}
    assert sum(row["n"] for row in columns["length"]) == result["test"]["n"] == 60
    assert "| population | n |" in (out / "results.md").read_text() and (out / "run" / "subgroups.png").is_file()


def test_conformal_benchmark_redraws_the_unseen_rows_and_checks_the_targets(tmp_path, tiny_model):
    """Coverage over re-draws of the calibration and test parts, the top-k baseline, the cost of the calibration part."""
    data = write_csv(tmp_path / "notes.csv", make_rows(210))
    out = tmp_path / "cf"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "trust" / "conformal.py"), "--data", str(data), "--text-column", "text",
         "--label-column", "label", "--model", tiny_model, "--method", "embeddings", "--draws", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["data"]["n_calibration"] == 51 and result["data"]["pool"] == 51 + 126
    assert (out / "run-no-calibration" / "metrics.json").is_file()
    summary = result["summary"]
    assert {"lac@0.9", "aps-by-class@0.95", "top-k@0.8"} <= set(summary)
    assert 0 <= summary["lac@0.9"]["min"] <= summary["lac@0.9"]["mean"] <= summary["lac@0.9"]["max"] <= 1
    assert len(result["targets"]) == 8 and result["cost"]["low"] <= result["cost"]["difference"] <= result["cost"]["high"]
    assert "| lac by class | 90% |" in (out / "results.md").read_text()


def test_deferral_benchmark_redraws_the_unseen_rows_at_both_targets(tmp_path, tiny_model):
    """The threshold chosen on re-drawn calibration parts, its test coverage and precision, the hindsight coverage."""
    data = write_csv(tmp_path / "notes.csv", make_rows(210))
    out = tmp_path / "df"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "trust" / "deferral.py"), "--data", str(data), "--text-column", "text",
         "--label-column", "label", "--model", tiny_model, "--method", "embeddings", "--draws", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert set(result["redraws"]) == {"0.8", "0.9"} and result["data"]["n_calibration"] == 51
    for row in result["redraws"].values():
        assert len(row["draws"]) == 4 and 0 <= row["mean_coverage"] <= 1 and row["short"] <= row["shown"]
    assert result["run_deferral"]["rule"]["target_precision"] == 0.8
    assert "draws short of the target" in (out / "results.md").read_text()


def test_deferral_benchmark_defers_per_label_on_a_multi_label_set(tmp_path, tiny_model):
    out = tmp_path / "dfml"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "trust" / "deferral.py"), "--multi-label", "--quick",
         "--model", tiny_model, "--method", "embeddings", "--draws", "3", "--targets", "0.9", "0.95",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["task"] == "multi-label" and set(result["redraws"]) == {"0.9", "0.95"}
    assert set(result["run_deferral"]["rule"]["per_label"]) == set(result["labels"])
    for row in result["redraws"].values():
        assert len(row["draws"]) == 3 and all(set(x["per_label"]) == set(result["labels"]) for x in row["draws"])
    assert "Per label, each at its own threshold" in (out / "results.md").read_text()


def test_drift_benchmark_runs_the_mixes_the_cut_draws_and_the_timed_command(tmp_path, tiny_model):
    data = write_csv(tmp_path / "notes.csv", make_rows(60))
    out = tmp_path / "drift"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "trust" / "drift.py"), "--data", str(data), "--text-column", "text",
         "--label-column", "label", "--model", tiny_model, "--method", "embeddings", "--draws", "3",
         "--draw-size", "20", "--permutations", "99", "--big", "200", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert len(result["prevalence"]) == 3 and [r["cut_share"] for r in result["covariate"]] == [0.0, 0.1, 0.25, 0.5]
    assert result["big"]["exit"] in (0, 3) and result["big"]["texts"] == 200
    assert "| texts cut |" in (out / "results.md").read_text() and len(result["targets"]) == 4
