"""drift.md and the drift plots (shares.png, confidence.png) from drift.json's figures (inference/drift.py)."""

from __future__ import annotations

from typing import Any

from medclf.reporting.report import figure_png


def shares_png(report: dict[str, Any]) -> bytes:
    """Class shares: training against estimated on the new data (with its 95% interval) and the share predicted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = report["prevalence"]["rows"]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 2.2))
    ax.scatter([r["train"] for r in rows], y, marker="|", s=200, color="black", label="training share", zorder=3)
    estimated = np.array([r["estimated"] for r in rows])
    errors = np.clip([estimated - np.array([r["low"] for r in rows]), np.array([r["high"] for r in rows]) - estimated],
                     0.0, None)  # a percentile interval need not hold its own point
    ax.errorbar(estimated, y, xerr=errors, fmt="o", color="tab:red", capsize=3,
                label="estimated on the new data (95% interval)", zorder=2)
    ax.scatter([r["predicted"] for r in rows], y, marker="x", color="tab:blue", label="share predicted", zorder=2)
    ax.set_yticks(y, [r["label"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, max(1e-3, max(max(r["high"], r["train"], r["predicted"]) for r in rows)) * 1.1)
    ax.set_xlabel("share of texts")
    ax.set_title(f"Class shares (prevalence p = {report['prevalence']['p_value']:.3g})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return figure_png(fig)


def confidence_png(report: dict[str, Any]) -> bytes:
    """How sure the model is: the histogram of each text's least sure decision, reference against new data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = report["confidence"]["histogram"]
    edges = hist["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = edges[1] - edges[0]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(centres, hist["reference"], width=width, alpha=0.5, label="reference", color="grey")
    ax.bar(centres, hist["new"], width=width, alpha=0.5, label="new data", color="tab:red")
    ax.set_xlabel("calibrated probability of the decision")
    ax.set_ylabel("share of texts")
    ax.set_title("Confidence")
    ax.legend()
    return figure_png(fig)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def drift_markdown(report: dict[str, Any], *, shares: str, confidence: str) -> str:
    prevalence, text, conf = report["prevalence"], report["text"], report["confidence"]
    ref = report["reference"]
    lines = [f"# Drift: {report['data_file']} against the run's reference", "", report["summary"], "",
             f"Decision rule: {report['decision_rule']}. Reference: the run's {ref['part']} ({ref['n']} texts; "
             f"embedded in {ref['embedding_precision']}, probabilities at {ref['probability_precision']}); new data: "
             f"{report['n']} texts, probabilities at {report['probability_precision']}.", "",
             "## Class shares (prevalence shift)", "", f"![class shares]({shares})", "",
             f"{prevalence['method']}; test: {prevalence['test']}, p = {prevalence['p_value']:.3g}.", "",
             "| label | training share | estimated on the new data | 95% interval | share predicted |",
             "|---|---|---|---|---|"]
    for r in prevalence["rows"]:
        lines.append(f"| {r['label']} | {r['train']:.3f} | {r['estimated']:.3f} | {r['low']:.3f}-{r['high']:.3f} | "
                     f"{r['predicted']:.3f} |")
    lines += ["", "`medclf predict RUN --priors priors.json` moves the run's probabilities to the estimated shares "
                  "(Bayes' correction); a run with a deferral rule or label sets refuses it unless --void-guarantees.",
              "", "## Texts (covariate shift)", "",
              f"{text['method']}: MMD^2 {text['statistic']:.4g}, p = {text['p_value']:.3g} ({text['permutations']} "
              f"permutations; {text['n_reference']} reference and {text['n_new']} new texts).", ""]
    slices = text.get("most_shifted") or []
    if slices:
        lines += ["The slices of the new data least like the reference (mean witness: the mean kernel to the new "
                  "texts minus that to the reference; the gap is to all new texts):", "",
                  "| by | value | texts | share | mean witness | gap |", "|---|---|---|---|---|---|"]
        lines += [f"| {s['by']} | {s['value']} | {s['n']} | {s['share']:.1%} | {s['witness']:.4f} | {s['gap']:+.4f} |"
                  for s in slices]
        lines.append("")
    lines += ["## Confidence", "", f"![confidence]({confidence})", "",
              f"Of {conf['of']}.", "", "| | reference | new data |", "|---|---|---|"]
    names = {"below_0.5": "texts below 0.5", "below_0.9": "texts below 0.9", "deferred": "texts deferred by the run's rule",
             "expected_accuracy": "expected accuracy of the decisions (mean calibrated probability)"}
    for key, name in names.items():
        if key in conf["new"]:
            lines.append(f"| {name} | {conf['reference'][key]:.3f} | {conf['new'][key]:.3f} |")
    labelled = report.get("labelled")
    if labelled:
        lines += ["", "## Measured on the new data's labels", "", "| figure | new data | 95% interval | run's test part |",
                  "|---|---|---|---|"]
        for key, value in labelled["figures"].items():
            band = labelled["intervals"].get(key) or {}
            interval = f"{band['low']:.3f}-{band['high']:.3f}" if "low" in band else "-"
            lines.append(f"| {key} | {value:.3f} | {interval} | {_share(labelled['run_test'].get(key))} |")
    windows = report.get("windows")
    if windows:
        lines += ["", "## By time window", "", "Windows of equal row count in time order.", "",
                  "| window | first | last | texts | prevalence p | text p | below 0.9 | most moved share |",
                  "|---|---|---|---|---|---|---|---|"]
        for w in windows:
            if not w["tested"]:
                lines.append(f"| {w['window']} | {w['first']} | {w['last']} | {w['n']} | {w['reason']} | | | |")
                continue
            moved = max(w["prevalence"]["rows"], key=lambda r: abs(r["estimated"] - r["train"]))
            lines.append(f"| {w['window']} | {w['first']} | {w['last']} | {w['n']} | {w['prevalence']['p_value']:.3g} "
                         f"| {w['text']['p_value']:.3g} | {w['confidence']['new']['below_0.9']:.3f} | "
                         f"{moved['label']} {moved['train']:.3f} -> {moved['estimated']:.3f} |")
    return "\n".join(lines) + "\n"
