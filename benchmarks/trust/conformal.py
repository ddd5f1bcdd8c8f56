"""Conformal label sets on real data: the abstracts protocol split trained by `medclf train` with its default
calibration part, then coverage and set sizes over repeated re-draws of the calibration and test parts from the rows
the model never saw (the calibration part and the test part pooled: neither trained nor selected anything), against
the plain top-k baseline; and what the calibration part costs in test macro-F1 against a run without one.

  python benchmarks/trust/conformal.py --out bench-out/conformal --baseline-run bench-out/subgroups/run
      # --baseline-run: a run of the same split trained without a calibration part (paired bootstrap of the test
      # macro-F1 difference on the same test texts); without it, the script trains one
  python benchmarks/trust/conformal.py --run bench-out/conformal/run --n-calibration 400 --baseline-run ... --out DIR
      # the re-draws only, on an existing run, with more of the pool calibrating

Each re-draw (seeded) keeps the run's calibration size: n_cal rows drawn at random from the pool calibrate, the rest
are the test part. Targets: mean coverage within 2 points of nominal at 80/90/95%; no re-draw more than 5 points below
90%; with by-class calibration every class with at least 50 test rows within 5 points of 90% (mean over re-draws);
mean set size below the top-k baseline's at equal coverage (top-k at the conformal sets' test coverage: k labels for
a share of the texts and k-1 for the rest, so that it covers as often; also shown: the plain top-k whose k is the
smallest reaching the level on the draw's calibration rows).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import (  # noqa: E402
    cpu_flags_line,
    read_json,
    read_part,
    run_parser,
    train_on_split,
    write_results,
    write_split,
)

LEVELS = (0.8, 0.9, 0.95)
VARIANTS = (("lac", False), ("aps", False), ("lac", True), ("aps", True))


def equal_coverage_size(curve: list[float], coverage: float) -> float:
    """The mean size of top-k sets at `coverage`: k where top-k reaches it exactly, else between k-1 and k (the
    share of texts given k labels, the rest k-1, that reaches it): top-k at equal coverage."""
    for k in range(1, len(curve)):
        if curve[k] >= coverage:
            step = curve[k] - curve[k - 1]
            return k - 1 + ((coverage - curve[k - 1]) / step if step > 0 else 1.0)
    return float(len(curve) - 1)


def redraws(probs: Any, y: Any, labels: list[str], *, n_cal: int, draws: int, seed: int) -> dict[str, Any]:
    """Coverage, set size and per-class coverage of each variant and level, and the top-k baseline, per re-draw."""
    import numpy as np

    from medclf.core.conformal import ConformalSets, SetRequest, topk_baseline, true_ranks

    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict[str, Any]]] = {f"{s}{'-by-class' if b else ''}@{lv}": [] for s, b in VARIANTS for lv in LEVELS}
    top: dict[str, list[dict[str, Any]]] = {str(lv): [] for lv in LEVELS}
    for _ in range(draws):
        order = rng.permutation(len(y))
        cal, test = order[:n_cal], order[n_cal:]
        sets = ConformalSets(probs[cal], y[cal])
        ranks = true_ranks(probs[test], y[test])
        curve = [0.0] + [float((ranks < k).mean()) for k in range(1, probs.shape[1] + 1)]  # top-k coverage, k = 0..K
        for score, by_class in VARIANTS:
            for level in LEVELS:
                mask = sets.masks(probs[test], SetRequest(level, score, by_class))
                hit = mask[np.arange(len(test)), y[test]]
                per_class = {lab: float(hit[y[test] == k].mean()) for k, lab in enumerate(labels) if (y[test] == k).any()}
                counts = {lab: int((y[test] == k).sum()) for k, lab in enumerate(labels)}
                rows[f"{score}{'-by-class' if by_class else ''}@{level}"].append(
                    {"coverage": float(hit.mean()), "mean_size": float(mask.sum(axis=1).mean()),
                     "topk_size_at_equal": equal_coverage_size(curve, float(hit.mean())),
                     "per_class": per_class, "class_rows": counts})
        for level in LEVELS:
            k = topk_baseline(sets, level)
            top[str(level)].append({"k": k, "coverage": float((ranks < k).mean())})
    return {"variants": rows, "top_k": top}


def summarise(found: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    for key, draws in found["variants"].items():
        cover = np.array([d["coverage"] for d in draws])
        per_class = {lab: float(np.mean([d["per_class"][lab] for d in draws if lab in d["per_class"]]))
                     for lab in labels}
        class_rows = {lab: float(np.mean([d["class_rows"][lab] for d in draws])) for lab in labels}
        out[key] = {"mean": float(cover.mean()), "sd": float(cover.std(ddof=1)), "min": float(cover.min()),
                    "max": float(cover.max()), "mean_size": float(np.mean([d["mean_size"] for d in draws])),
                    "topk_size_at_equal": float(np.mean([d["topk_size_at_equal"] for d in draws])),
                    "per_class": per_class, "class_rows": class_rows}
    for level, draws in found["top_k"].items():
        out[f"top-k@{level}"] = {"mean": float(np.mean([d["coverage"] for d in draws])),
                                 "mean_size": float(np.mean([d["k"] for d in draws])),
                                 "k": sorted({d["k"] for d in draws})}
    return out


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """Each target of the label-set feature, checked on the re-draws."""
    checks: dict[str, Any] = {}
    for score in ("lac", "aps"):
        checks[f"{score}: mean coverage within 2 points at 80/90/95%"] = all(
            abs(summary[f"{score}@{lv}"]["mean"] - lv) <= 0.02 for lv in LEVELS)
        checks[f"{score}: no re-draw more than 5 points below 90%"] = summary[f"{score}@0.9"]["min"] >= 0.85
        by = summary[f"{score}-by-class@0.9"]
        judged = [lab for lab, n in by["class_rows"].items() if n >= 50]
        checks[f"{score} by class: every class with >= 50 test rows within 5 points of 90%"] = all(
            abs(by["per_class"][lab] - 0.9) <= 0.05 for lab in judged)
        checks[f"{score}: mean set size below top-k's at equal coverage"] = all(
            summary[f"{score}@{lv}"]["mean_size"] < summary[f"{score}@{lv}"]["topk_size_at_equal"] for lv in LEVELS)
    return checks


def paired_difference(run: Path, baseline: Path, labels: list[str], *, seed: int = 0) -> dict[str, Any]:
    """Test macro-F1 of `run` minus `baseline` on the same test texts, with a paired percentile bootstrap interval."""
    import numpy as np
    from sklearn.metrics import f1_score

    p_run, y = read_part(run / "predictions_test.csv", labels)
    p_base, y_base = read_part(baseline / "predictions_test.csv", labels)
    if len(y) != len(y_base) or (y != y_base).any():
        raise SystemExit("The baseline run's test part is not the same texts; train it on the same split.")
    a, b = p_run.argmax(1), p_base.argmax(1)

    def diff(idx: Any) -> float:
        return float(f1_score(y[idx], a[idx], average="macro") - f1_score(y[idx], b[idx], average="macro"))

    rng = np.random.default_rng(seed)
    boot = [diff(rng.integers(0, len(y), len(y))) for _ in range(2000)]
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"macro_f1": float(f1_score(y, a, average="macro")), "baseline_macro_f1": float(f1_score(y, b, average="macro")),
            "difference": diff(np.arange(len(y))), "low": float(low), "high": float(high),
            "method": "paired percentile bootstrap of the same test texts, 2000 resamples, 95%"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = run_parser(__doc__, "bench-out/conformal")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--baseline-run", default=None, help="a run of the same split with --calibration-size 0")
    parser.add_argument("--calibration-size", default="0.1", help="the run's --calibration-size")
    parser.add_argument("--run", default=None, help="an existing run with a calibration part: skip training")
    parser.add_argument("--n-calibration", type=int, default=None,
                        help="calibration rows per re-draw (default: as many as the run's calibration part)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = (write_split(args.data, args.text_column, args.label_column, out / "split", quick=args.quick, quick_rows=900)
             if args.run is None else {"split": f"the run's ({args.run})"})
    run = Path(args.run) if args.run else out / "run"
    command, seconds = (("(existing run)", None) if args.run
                        else train_on_split(args, out / "split", run, "--calibration-size", args.calibration_size))
    baseline = Path(args.baseline_run) if args.baseline_run else out / "run-no-calibration"
    baseline_command = None
    if not args.baseline_run:
        baseline_command, _ = train_on_split(args, out / "split", baseline, "--calibration-size", "0")
    metrics = read_json(run / "metrics.json")
    labels = metrics["test"]["labels"]
    p_cal, y_cal = read_part(run / "predictions_calibration.csv", labels)
    p_test, y_test = read_part(run / "predictions_test.csv", labels)
    import numpy as np

    pool_p, pool_y = np.concatenate([p_cal, p_test]), np.concatenate([y_cal, y_test])
    n_cal = args.n_calibration or len(y_cal)
    found = redraws(pool_p, pool_y, labels, n_cal=n_cal, draws=args.draws, seed=0)
    summary = summarise(found, labels)
    results = {
        "date": time.strftime("%Y-%m-%d"), "cpu_flags": cpu_flags_line(),
        "command": "python benchmarks/trust/conformal.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "train_command": command, "baseline_command": baseline_command, "baseline_run": str(baseline),
        "seconds": seconds, "data": {"file": args.data, **split, "n_calibration": n_cal, "run_calibration": len(y_cal),
                                      "pool": len(pool_y)},
        "draws": args.draws, "test": {k: metrics["test"].get(k) for k in ("n", "accuracy", "macro_f1")},
        "run_sets": metrics["test"]["sets"], "summary": summary, "targets": targets(summary),
        "cost": paired_difference(run, baseline, labels),
    }

    def render(r: dict[str, Any]) -> str:
        s, d, c = r["summary"], r["data"], r["cost"]
        lines = [f"Conformal label sets, {r['date']}: {r['cpu_flags']}. Data {Path(d['file']).name}: {d['split']}; "
                 f"`{r['train_command']}`" + (f" ({r['seconds']:.0f} s)" if r["seconds"] else "")
                 + f": {d.get('run_calibration', d['n_calibration'])} calibration rows. "
                 f"{r['draws']} re-draws of {d['n_calibration']} calibration and {d['pool'] - d['n_calibration']} test "
                 f"rows from the {d['pool']} the model never saw.", "",
                 "| sets | level | mean coverage | sd | min | max | mean size | top-k size at equal coverage |",
                 "|---|---|---|---|---|---|---|---|"]
        for score, by_class in VARIANTS:
            for lv in LEVELS:
                row = s[f"{score}{'-by-class' if by_class else ''}@{lv}"]
                lines.append(f"| {score}{' by class' if by_class else ''} | {lv:.0%} | {row['mean']:.3f} | "
                             f"{row['sd']:.3f} | {row['min']:.3f} | {row['max']:.3f} | {row['mean_size']:.2f} | "
                             f"{row['topk_size_at_equal']:.2f} |")
        for lv in LEVELS:
            row = s[f"top-k@{lv}"]
            lines.append(f"| top-k (k {', '.join(map(str, row['k']))}, chosen on the calibration rows) | {lv:.0%} | "
                         f"{row['mean']:.3f} | | | | {row['mean_size']:.2f} | |")
        lines += ["", "Coverage per class at 90% (mean over re-draws; mean test rows per class):", "",
                  "| class | test rows | lac | lac by class | aps | aps by class |", "|---|---|---|---|---|---|"]
        for lab in r["test_labels"]:
            cells = [s[f"{v}@0.9"]["per_class"][lab] for v in ("lac", "lac-by-class", "aps", "aps-by-class")]
            lines.append(f"| {lab} | {s['lac@0.9']['class_rows'][lab]:.0f} | " + " | ".join(f"{x:.3f}" for x in cells) + " |")
        lines += ["", "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in r["targets"].items()) + ".",
                  "", f"What the calibration part costs: test macro-F1 {c['macro_f1']:.3f} with it against "
                  f"{c['baseline_macro_f1']:.3f} without ({r['baseline_run']}): difference {c['difference']:+.3f} "
                  f"({c['low']:+.3f} to {c['high']:+.3f}, {c['method']})."]
        return "\n".join(lines) + "\n"

    results["test_labels"] = labels
    return write_results(out, results, render)


if __name__ == "__main__":
    main()
