"""report.md, report.html (self-contained: images inline, no external reference) and the plots of a run:
confusion_matrix.png, calibration.png, training.png. Texts never appear in any of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medclf.config import TrainConfig
from medclf.core.conformal import set_lines
from medclf.core.deferral import deferral_lines
from medclf.core.figures import (
    FIGURE_NAMES,
    Calibration,
    DataFigures,
    DeferralFigures,
    FigureKey,
    Figures,
    Headline,
    HistoryRow,
    RunMetrics,
    Subgroups,
)
from medclf.core.methods import method_of
from medclf.core.metrics import format_table
from medclf.core.subgroups import KEY_NAMES, subgroup_lines
from medclf.core.tasks import task_of
from medclf.run.artifacts import (
    CALIBRATION_FILE,
    CONFUSION_FILE,
    DEFERRAL_FILE,
    REPORT_FILE,
    REPORT_HTML_FILE,
    SUBGROUPS_FILE,
    TRAINING_FILE,
    atomic_write_bytes,
    atomic_write_text,
)
from medclf.run.runspec import RunSpec

if TYPE_CHECKING:
    from markdown_it.renderer import RendererProtocol
    from markdown_it.token import Token
    from markdown_it.utils import EnvType, OptionsDict
    from matplotlib.figure import Figure


def figure_png(fig: Figure) -> bytes:
    """A matplotlib figure as PNG bytes (110 dpi), the figure closed."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def confusion_png(matrix: list[list[int]], labels: list[str], *, title: str) -> bytes:
    """A labelled confusion-matrix heat map: rows are true classes, columns predictions, row-normalised colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(4.5, 0.7 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels=labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return figure_png(fig)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _missing_image(line: str, images: list[str]) -> bool:
    return line.startswith("![") and line.rstrip(")").rsplit("(", 1)[-1] not in images


def _baseline_lines(baseline: Headline | None, test: Figures, multi: bool) -> list[str]:
    if not baseline:
        return []
    keys: tuple[FigureKey, ...] = ("micro_f1", "macro_f1") if multi else ("accuracy", "macro_f1")
    figures = ", ".join(f"{FIGURE_NAMES[k]} {baseline[k]:.4f} (this model: {test[k]:.4f})" for k in keys)
    return [f"Reference on the same split: TF-IDF word 1-2-grams + logistic regression: {figures}. A model that "
            "does not beat it is not worth its cost.", ""]


def training_png(history: list[HistoryRow], *, per: str) -> bytes:
    """Loss (train and validation) and validation macro-F1 per epoch (`per` 'epoch'), or per regularisation value
    tried ('C': the embeddings method)."""
    embeddings = per == "C"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = [row["C"] if embeddings else row["epoch"] for row in history]
    if not embeddings:
        ax.plot(x, [row["train_loss"] for row in history], "o-", label="train loss")
    ax.plot(x, [row["val_loss"] if row["val_loss"] is not None else float("nan") for row in history], "s-",
            label="validation loss")
    ax.set_xlabel("regularisation C (log scale)" if embeddings else "epoch")
    if embeddings:
        ax.set_xscale("log")
    else:
        ax.set_xticks(x)
    ax.set_ylabel("loss")
    right = ax.twinx()
    right.plot(x, [row["val_macro_f1"] for row in history], "^-", color="tab:green", label="validation macro-F1")
    if any("avg_val_macro_f1" in row for row in history):
        pts = [(row["epoch"], row["avg_val_macro_f1"]) for row in history if "avg_val_macro_f1" in row]
        right.plot(*zip(*pts), "v--", color="tab:olive", label="validation macro-F1, averaged weights")
    right.set_ylabel("macro-F1")
    right.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [str(h.get_label()) for h in handles], loc="center right", fontsize=8)
    ax.set_title("Training: loss and validation macro-F1")
    return figure_png(fig)


def reliability_png(summary: Calibration, *, title: str) -> bytes:
    """Reliability diagram: observed frequency against mean confidence per bin, before and after scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for name, r, ece, style in (("before", summary["reliability_before"], summary["ece_before"], "o-"),
                                ("after", summary["reliability_after"], summary["ece_after"], "s-")):
        keep = [i for i, c in enumerate(r["count"]) if c > 0]
        label = (f"{name} (ECE {ece:.3f})" if name == "before"
                 else f"after, T = {summary['temperature']:.2f} (ECE {ece:.3f})")
        ax.plot([r["confidence"][i] for i in keep], [r["frequency"][i] for i in keep], style, label=label)
    ax.set_ylabel("observed frequency (share right)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left")
    edges = np.linspace(0, 1, summary["bins"] + 1)
    hist.bar(edges[:-1], summary["reliability_after"]["count"], width=1 / summary["bins"], align="edge",
             color="tab:orange", alpha=0.7, label="after")
    hist.set_xlabel("confidence (mean predicted probability in the bin)")
    hist.set_ylabel("predictions")
    return figure_png(fig)


def subgroups_png(subgroups: Subgroups, *, title: str) -> bytes:
    """Forest plot: one row per slice of every slice column, its macro-F1 with the interval, the whole part's
    macro-F1 as a vertical line; slices too small to judge are named with their row count and no point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "macro_f1"
    names: list[str] = []
    points: list[tuple[int, float, float, float]] = []
    for column, rows in subgroups["columns"].items():
        for row in rows:
            figure = row.get("figures", {}).get(key)
            band = row.get("intervals", {}).get(key)
            if row["judged"] and figure is not None and band is not None:
                names.append(f"{column} = {row['value']} (n={row['n']})")
                points.append((len(names) - 1, figure, band["low"], band["high"]))
            else:
                names.append(f"{column} = {row['value']} (n={row['n']}, not judged)")
    fig, ax = plt.subplots(figsize=(8, 1.3 + 0.35 * len(names)))
    for y, figure, low, high in points:
        ax.errorbar(figure, y, xerr=[[figure - low], [high - figure]], fmt="s", color="tab:blue", capsize=3)
    whole = subgroups["overall"][key]
    label = f"{KEY_NAMES[key]}, {subgroups['level']:.0%} interval"
    if whole is not None:  # named under the axis: a legend box would cover a row
        ax.axvline(whole, color="grey", linestyle="--")
        label += f"; dashed: whole part {whole:.3f}"
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(label)
    ax.set_title(title)
    return figure_png(fig)


def deferral_png(figures: DeferralFigures, *, title: str) -> bytes:
    """Risk-coverage on the test part: the precision of the most confident share of texts for every share, the
    target precision, and the share the run's threshold decides with its realised precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    curve = figures["curve"]
    ax.plot([p["coverage"] for p in curve], [p["precision"] for p in curve], color="tab:blue",
            label="precision of the most confident share")
    target = figures["rule"]["target_precision"]
    ax.axhline(target, color="grey", linestyle="--", label=f"target {target:.0%}")
    if figures["precision"] is not None and figures["low"] is not None and figures["high"] is not None:
        ax.errorbar(figures["coverage"], figures["precision"], color="tab:red", fmt="o", capsize=3,
                    yerr=[[figures["precision"] - figures["low"]], [figures["high"] - figures["precision"]]],
                    label="the run's threshold (95% interval)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("share of texts decided automatically (coverage)")
    ax.set_ylabel("precision of those decisions")
    ax.legend(loc="lower left")
    ax.set_title(title)
    return figure_png(fig)


def _deferral_lines(figures: DeferralFigures) -> list[str]:
    return ["## Deferral to a person", "", f"![risk and coverage]({DEFERRAL_FILE})", "", *deferral_lines(figures), ""]


def _subgroup_lines(subgroups: Subgroups) -> list[str]:
    return ["## Performance by subgroup", "",
            "The test figures for every value of each slice column (its rows only), with the gap to the whole test "
            "part; a gap whose interval is wide says little, one that holds across figures says the model works "
            "less well there.", "", f"![performance by subgroup]({SUBGROUPS_FILE})", "", *subgroup_lines(subgroups),
            ""]


def markdown_html(text: str, directory: Path, images: list[str]) -> str:
    """The report's markdown as one self-contained HTML page, rendered by markdown-it-py (CommonMark and tables; raw
    HTML in the markdown is not passed through): the run's PNGs are inlined as data: URIs, any other image is left
    as its alt text, and nothing is fetched from anywhere (the page's content security policy says so too)."""
    import base64

    from markdown_it import MarkdownIt
    from markdown_it.common.utils import escapeHtml

    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def image(_renderer: RendererProtocol, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
        token = tokens[idx]
        alt = escapeHtml("".join(child.content for child in token.children or []))
        src = str(token.attrGet("src") or "")
        if src not in images:
            return alt
        data = base64.b64encode((directory / src).read_bytes()).decode("ascii")
        return f'<img alt="{alt}" src="data:image/png;base64,{data}">'

    md.add_render_rule("image", image)
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
             "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;"
             "text-align:right}td:first-child,th:first-child{text-align:left}pre{background:#f5f5f5;padding:.75rem;"
             "overflow-x:auto}img{max-width:100%}code{background:#f0f0f0;padding:0 .2rem}")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\"><title>medclf run report</title>"
            f"<style>{style}</style></head><body>\n" + md.render(text) + "</body></html>\n")


def _calibration_lines(cal: Calibration, config: TrainConfig, multi: bool) -> list[str]:
    how = (f"temperature scaling, T = {cal['temperature']:.3f}, {cal.get('note', '')} (logits are divided by T before "
           "the " + ("sigmoid" if multi else "softmax") + "; no prediction changes)"
           if config.calibrate else "off (--no-calibrate): the model's own probabilities")
    return [
        "## Calibration",
        "",
        f"Calibration: {how}. On the test part, {'every (text, label) probability' if multi else 'the top probability'} "
        f"against how often it was right, in {cal['bins']} equal-width bins:",
        "",
        "| | expected calibration error | Brier score |",
        "|---|---|---|",
        f"| before | {cal['ece_before']:.4f} | {cal['brier_before']:.4f} |",
        f"| after | {cal['ece_after']:.4f} | {cal['brier_after']:.4f} |",
        "",
        "ECE is the average gap between a stated probability and the observed frequency (0 = a '70%' is right "
        "70% of the time); Brier is the mean squared error of the probabilities (lower is better).",
        "",
        f"![reliability diagram]({CALIBRATION_FILE})",
        "",
    ]


def _multilabel_notes(test: Figures, config: TrainConfig) -> list[str]:
    fixed = test.get("at_threshold_0.5", {})
    lines = [
        f"Multi-label: {len(test['labels'])} labels, {test['labels_per_text']:.2f} per test text on average "
        f"({test['texts_without_label']} texts with none); a label is predicted where its probability reaches its "
        "threshold, tuned on the validation part to maximise that label's F1.",
        "",
        "| thresholds | micro-F1 | macro-F1 | samples-F1 | subset accuracy | Hamming loss |",
        "|---|---|---|---|---|---|",
        f"| tuned (used) | {test['micro_f1']:.4f} | {test['macro_f1']:.4f} | {test['samples_f1']:.4f} | "
        f"{test['subset_accuracy']:.4f} | {test['hamming_loss']:.4f} |",
    ]
    if fixed:
        lines.append(f"| 0.5 for every label | {fixed['micro_f1']:.4f} | {fixed['macro_f1']:.4f} | {fixed['samples_f1']:.4f} | "
                     f"{fixed['subset_accuracy']:.4f} | {fixed['hamming_loss']:.4f} |")
    lines += ["", "Micro-F1 pools every (text, label) decision, so frequent labels dominate it; macro-F1 weighs every "
              "label equally; samples-F1 averages per text; subset accuracy counts texts whose label set is exactly "
              "right; Hamming loss is the share of wrong (text, label) decisions."]
    return lines


def _write_plots(directory: Path, metrics: RunMetrics, *, multi: bool, history: str | None) -> None:
    """The PNGs the report shows: confusion matrix (single-label), reliability diagram, training history."""
    test = metrics["test"]
    if not multi:  # a multi-label run has no single confusion matrix: its per-label table says the same
        atomic_write_bytes(
            directory / CONFUSION_FILE,
            confusion_png(test["confusion_matrix"], test["labels"], title=f"Test confusion matrix (n={test['n']})"),
        )
    cal = test.get("calibration")
    if cal is not None:
        atomic_write_bytes(directory / CALIBRATION_FILE, reliability_png(
            cal, title=f"Test reliability ({'every label' if multi else 'top label'}, n={test['n']})"))
    if history is not None:  # a method that trains nothing has no history to plot
        atomic_write_bytes(directory / TRAINING_FILE, training_png(metrics["history"], per=history))
    if "deferral" in test:
        atomic_write_bytes(directory / DEFERRAL_FILE, deferral_png(test["deferral"],
                                                                   title=f"Test part: deferral (n={test['n']})"))
    if "subgroups" in test:
        atomic_write_bytes(directory / SUBGROUPS_FILE, subgroups_png(test["subgroups"],
                                                                     title=f"Test part by subgroup (n={test['n']})"))


def _summary_lines(metrics: RunMetrics, spec: RunSpec) -> list[str]:
    """The report's head: when, which model on what, the split, the method's options and what validation kept."""
    config, timing, data, method = spec.config, metrics["timing"], metrics["data"], method_of(spec.method)
    return [
        "# medclf run report",
        "",
        f"- Created: {spec.created} with medclf {spec.medclf_version}",
        f"- Model: `{config.model}` ({spec.model_source}), device {spec.device}, "
        f"precision {spec.precision} ({spec.precision_reason}); validation and test figures at "
        f"{spec.evaluation_precision}",
        f"- Data: `{spec.data_file}` (sha256 {str(spec.data_sha256['data'])[:16]}...); "
        f"text column(s) {', '.join(spec.text_columns)}, label column {spec.label_column}",
        f"- Split: {data['how']}: {data['n_train']} train / {data['n_val']} validation / {data['n_test']} test",
        method.options(config),
        method.chosen(metrics),
        f"- Training: {timing['train_seconds']:.1f} s, {timing['train_samples_per_second'] or 0:.1f} samples/s; "
        f"test inference {timing['test_inference_samples_per_second']:.1f} samples/s",
        "",
    ]


def _history_lines(history: list[HistoryRow], per: str | None) -> list[str]:
    """The training history: per regularisation value tried ('C') or per epoch ('epoch'); nothing for None."""
    if per is None:
        return []
    lines = ["## Training history", "", f"![training curve]({TRAINING_FILE})", ""]
    if per == "C":
        prior = any("prior_weight" in row for row in history)  # the descriptions' zero-shot head, weighted
        lines += [f"| C |{' prior weight |' if prior else ''} val loss | val accuracy | val macro-F1 |",
                  "|---|" + ("---|" if prior else "") + "---|---|---|"]
        return lines + [
            f"| {row['C']:g} |{' ' + format(row.get('prior_weight', 0.0), 'g') + ' |' if prior else ''} "
            f"{_num(row['val_loss'])} | {row['val_accuracy']:.4f} | {row['val_macro_f1']:.4f} |"
            for row in history
        ]
    lines += [
        "| epoch | train loss | val loss | val accuracy | val macro-F1 | averaged weights: val loss / macro-F1 "
        "| seconds | samples/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return lines + [
        f"| {row['epoch']} | {row['train_loss']:.4f} | {_num(row['val_loss'])} | {row['val_accuracy']:.4f} | "
        f"{row['val_macro_f1']:.4f} | "
        + (f"{_num(row['avg_val_loss'])} / {row['avg_val_macro_f1']:.4f}" if "avg_val_loss" in row else "")
        + f" | {row['seconds']:.1f} | {row['samples_per_second']:.1f} |"
        for row in history
    ]


def _data_lines(data: DataFigures, labels: list[str], config: TrainConfig, multi: bool) -> list[str]:
    """Rows per class and part, and how long the texts were and how much of them the model read."""
    counts = data["class_counts"]
    parts = [p for p in ("train", "validation", "test", "calibration") if p in counts]
    lines = ["", "## Data", "", f"| {'label' if multi else 'class'} | {' | '.join(parts)} |", "|---" * (len(parts) + 1) + "|"]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(str(counts[p].get(label, 0)) for p in parts) + " |")
    if config.long_text == "chunk":
        lines += ["", f"Long texts: windows of {config.max_length} tokens, at most {config.max_chunks} per text, "
                      f"window logits pooled by {config.pool}.", "",
                  "| part | mean tokens | windows per text | texts longer than the windows cover | tokens no window saw |",
                  "|---|---|---|---|---|"]
        for name, t in data["truncation"].items():
            lines.append(f"| {name} | {t['mean_tokens']:.0f} | {t.get('mean_windows', 1.0):.1f} | "
                         f"{t['texts_cut']} ({t['share_texts_cut']:.1%}) | {t['share_tokens_lost']:.1%} |")
    else:
        lines += ["", "| part | mean tokens | texts cut at max length | tokens lost |", "|---|---|---|---|"]
        for name, t in data["truncation"].items():
            lines.append(
                f"| {name} | {t['mean_tokens']:.0f} | {t['texts_cut']} ({t['share_texts_cut']:.1%}) | {t['share_tokens_lost']:.1%} |"
            )
    if all("tokens_p50" in t for t in data["truncation"].values()):
        lines += ["", "Text length in tokens (whole texts, before any cut):", "",
                  "| part | 10th percentile | median | 90th percentile | longest |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {t['tokens_p10']:.0f} | {t['tokens_p50']:.0f} | {t['tokens_p90']:.0f} | {t['tokens_max']} |"
                  for name, t in data["truncation"].items()]
    return lines


def _environment_lines(spec: RunSpec) -> list[str]:
    hashes = ", ".join(f"{k} {v}" for k, v in spec.data_sha256.items() if v)
    return ["", "## Environment", "", ", ".join(f"{k} {v}" for k, v in spec.versions.items()), "",
            f"Data SHA-256: {hashes}.", ""]


def write_report(directory: Path, *, metrics: RunMetrics, spec: RunSpec, plots: bool = True) -> None:
    """report.md and report.html; with plots, also the PNGs they show (cross-validation folds skip them)."""
    test, config = metrics["test"], spec.config
    multi = task_of(test).multi_label
    method = method_of(spec.method)
    if plots:
        _write_plots(directory, metrics, multi=multi, history=method.history)
    images = [name for name in (CONFUSION_FILE, CALIBRATION_FILE, TRAINING_FILE, SUBGROUPS_FILE, DEFERRAL_FILE)
              if (directory / name).is_file()]
    cal = test.get("calibration")
    lines = [
        *_summary_lines(metrics, spec),
        "## Test metrics",
        "",
        "```",
        format_table(test),
        "```",
        "",
        *_baseline_lines(metrics.get("baseline_tfidf"), test, multi),
        *(_multilabel_notes(test, config) if multi else [
            "Macro-F1 weighs every class equally, so a small class the model misses shows here even when "
            "accuracy looks good.",
            "",
            f"![confusion matrix]({CONFUSION_FILE})",
        ]),
        "",
        *(_calibration_lines(cal, config, multi) if cal is not None else []),
        *(["## Label sets (conformal)", "", *set_lines(test["sets"]), ""] if "sets" in test else []),
        *(_deferral_lines(test["deferral"]) if "deferral" in test else []),
        *(_subgroup_lines(test["subgroups"]) if "subgroups" in test else []),
        *_history_lines(metrics["history"], method.history),
        *_data_lines(metrics["data"], test["labels"], config, multi),
        *_environment_lines(spec),
    ]
    text = "\n".join(line for line in lines if not _missing_image(line, images))
    atomic_write_text(directory / REPORT_FILE, text)
    atomic_write_text(directory / REPORT_HTML_FILE, markdown_html(text, directory, images))
