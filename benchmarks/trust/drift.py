"""Drift on real data: the abstracts protocol split trained by `medclf train` (it keeps its validation part as the
drift reference), then
- prevalence shift: the test part resampled (seeded, with replacement, as many rows as it has) to 5 mixes, each
  class in turn at 50% and the others in their training proportions, `--draws` times each: the mean absolute error
  of the shares `medclf drift` estimates (EM) against assuming the training shares, and the accuracy and macro-F1
  change from applying them (Bayes' correction, `predict --priors`);
- covariate shift, the run's reference (its validation part) against `--draws` draws of `--draw-size` test texts:
  no shift (false alarms at alpha), and draws where 10%, 25% and 50% of the texts are cut to their first sentence
  (detection rate), for the text test alone at alpha and for the decision `medclf drift` takes (either test below
  alpha / 2); the prevalence test's false alarms on the no-shift draws too;
- the time of `medclf drift` on 10,000 texts (the test texts drawn with replacement), one process.

  python benchmarks/trust/drift.py --out bench-out/drift                 # trains the run (about 15 min on 2 cores)
  python benchmarks/trust/drift.py --run RUN --split DIR --out bench-out/drift   # a run of the split in DIR

The test texts are read from the split's test.csv in the order of the run's predictions_test.csv (its `row`).
"""

from __future__ import annotations

import re
import subprocess
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

CUT_SHARES = (0.0, 0.1, 0.25, 0.5)


def first_sentence(text: str) -> str:
    """The text up to its first sentence end (., ! or ? followed by a space); the whole text where there is none."""
    found = re.search(r"[.!?]\s", text)
    return text[: found.start() + 1] if found else text


def prevalence(probs: Any, y: Any, train: Any, labels: list[str], *, reference: Any, draws: int) -> list[dict[str, Any]]:
    import numpy as np
    from sklearn.metrics import f1_score

    from medclf.core.tasks import SINGLE_LABEL

    rng = np.random.default_rng(0)
    n, k = len(y), len(labels)
    rows = []
    for target in range(k):
        mix = np.where(np.arange(k) == target, 0.5, 0.5 * train / (train.sum() - train[target]))
        mix[target] = 0.5
        found = []
        for _ in range(draws):
            counts = rng.multinomial(n, mix)
            idx = np.concatenate([rng.choice(np.flatnonzero(y == c), counts[c]) for c in range(k) if counts[c]])
            p, truth = probs[idx], y[idx]
            actual = np.bincount(truth, minlength=k) / len(truth)
            shift = SINGLE_LABEL.prior_shift(p, train, reference=reference, resamples=50)
            moved = SINGLE_LABEL.reweight(p, train, shift.shares)
            oracle = SINGLE_LABEL.reweight(p, train, np.clip(actual, 1e-6, None))  # the true shares, as a bound
            found.append({
                "mae_estimated": float(np.abs(shift.shares - actual).mean()),
                "mae_training": float(np.abs(train - actual).mean()),
                "covered": float(np.mean((shift.low <= actual) & (actual <= shift.high))),
                "accuracy_before": float((p.argmax(1) == truth).mean()),
                "accuracy_after": float((moved.argmax(1) == truth).mean()),
                "macro_f1_before": float(f1_score(truth, p.argmax(1), average="macro", labels=range(k))),
                "macro_f1_after": float(f1_score(truth, moved.argmax(1), average="macro", labels=range(k))),
                "accuracy_true_shares": float((oracle.argmax(1) == truth).mean()),
                "p_value": shift.p_value,
            })
        mean = {key: float(np.mean([f[key] for f in found])) for key in found[0]}
        rows.append({"mix": f"{labels[target]} at 50%", "shares": mix.tolist(), **mean,
                     "accuracy_gain_range": [float(min(f["accuracy_after"] - f["accuracy_before"] for f in found)),
                                             float(max(f["accuracy_after"] - f["accuracy_before"] for f in found))],
                     "detected": sum(f["p_value"] < 0.025 for f in found)})
    return rows


def covariate(reference: Any, vectors: Any, cut: Any, probs: Any, train: Any, *, reference_probs: Any, draws: int,
              size: int, alpha: float, permutations: int) -> list[dict[str, Any]]:
    import numpy as np

    from medclf.core.shift import mmd_test
    from medclf.core.tasks import SINGLE_LABEL

    rows = []
    for share in CUT_SHARES:
        rng = np.random.default_rng(1)
        p_text, p_prior, decided = [], [], []
        for d in range(draws):
            idx = rng.choice(len(vectors), size, replace=False)
            chosen = vectors[idx].copy()
            k = int(round(share * size))
            chosen[:k] = cut[idx[:k]]
            found = mmd_test(reference, chosen, permutations=permutations, seed=d)
            p_text.append(found.p_value)
            p_prior.append(SINGLE_LABEL.prior_shift(probs[idx], train, reference=reference_probs, resamples=10,
                                                    seed=d).p_value if share == 0 else 1.0)
            decided.append(min(found.p_value, p_prior[-1]) < alpha / 2)
        rows.append({"cut_share": share, "draws": draws, "size": size,
                     "text_detected_at_alpha": sum(p < alpha for p in p_text),
                     "text_detected_at_half_alpha": sum(p < alpha / 2 for p in p_text),
                     "decision_shift": sum(decided), "median_p": float(np.median(p_text)), "p_values": p_text,
                     **({"prevalence_false_alarms_at_half_alpha": sum(p < alpha / 2 for p in p_prior),
                         "prevalence_false_alarms_at_alpha": sum(p < alpha for p in p_prior)} if share == 0 else {})})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = run_parser(__doc__, "bench-out/drift")
    parser.add_argument("--run", default=None)
    parser.add_argument("--split", default=None, help="the split folder the --run was trained on (train.csv, test.csv)")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--draw-size", type=int, default=300)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--big", type=int, default=10_000, help="texts of the timed `medclf drift` (0: not timed)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/trust/drift.py " + " ".join(argv if argv is not None else sys.argv[1:])
    seconds, train_command = None, None
    if args.run:
        run, split_dir = Path(args.run), Path(args.split or out / "split")
        split: dict[str, Any] = {"split": f"the run's ({run})"}
    else:
        split_dir = out / "split"
        split = write_split(args.data, args.text_column, args.label_column, split_dir, quick=args.quick,
                            quick_rows=900)
        run = out / "run"
        train_command, seconds = train_on_split(args, split_dir, run)
    import numpy as np
    import pandas as pd

    from medclf import TextClassifier
    from medclf.run.reference import read_reference

    metrics = read_json(run / "metrics.json")
    labels = metrics["test"]["labels"]
    probs, y = read_part(run / "predictions_test.csv", labels)
    rows = pd.read_csv(run / "predictions_test.csv")["row"].tolist()
    test = pd.read_csv(split_dir / "test.csv", dtype={"label": str}, keep_default_na=False)
    texts = test["text"].astype(str).iloc[rows].tolist()
    reference = read_reference(run)
    assert reference is not None, "the run keeps no drift reference"
    train = np.array([reference.info.train_shares[lab] for lab in labels])
    clf = TextClassifier.load(run)
    start = time.perf_counter()
    vectors = clf.embed(texts)
    cut_texts = [first_sentence(t) for t in texts]
    cut = clf.embed(cut_texts)
    embed_seconds = time.perf_counter() - start
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "cpu_flags": cpu_flags_line(), "command": command,
        "train_command": train_command, "train_seconds": seconds, "data": {"file": args.data, **split},
        "test": {k: metrics["test"].get(k) for k in ("n", "accuracy", "macro_f1")},
        "reference": {"part": reference.info.part, "n": reference.info.n}, "alpha": args.alpha,
        "cut_words": {"mean_before": float(np.mean([len(t.split()) for t in texts])),
                      "mean_after": float(np.mean([len(t.split()) for t in cut_texts]))},
        "embed_seconds": embed_seconds,
        "prevalence": prevalence(probs, y, train, labels, reference=reference.probabilities, draws=args.draws),
        "covariate": covariate(reference.embeddings, vectors, cut, probs, train, reference_probs=reference.probabilities,
                               draws=args.draws, size=args.draw_size, alpha=args.alpha, permutations=args.permutations),
    }
    if args.big:
        rng = np.random.default_rng(2)
        big = out / "big.csv"
        pd.DataFrame({"text": [texts[i] for i in rng.integers(0, len(texts), args.big)]}).to_csv(big, index=False)
        cmd = [sys.executable, "-m", "medclf", "--quiet", "drift", str(run), "--data", str(big), "--output",
               str(out / "drift-big"), "--overwrite"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        results["big"] = {"texts": args.big, "seconds": time.perf_counter() - start, "exit": done.returncode,
                          "command": " ".join(["medclf", *cmd[3:]]), "summary": done.stdout.strip()}
        big.unlink()
    prev, cov = results["prevalence"], {r["cut_share"]: r for r in results["covariate"]}
    results["targets"] = {
        "estimated shares' mean absolute error at least 2x lower than the training shares' on every mix":
            all(r["mae_estimated"] * 2 <= r["mae_training"] for r in prev),
        "accuracy raised on every shifted mix": all(r["accuracy_after"] > r["accuracy_before"] for r in prev),
        "text test false alarms at most 0.10 of the no-shift draws at alpha":
            cov[0.0]["text_detected_at_alpha"] <= 0.1 * args.draws,
        "25% and 50% mixes detected in at least 19 of 20 draws":
            all(cov[s]["text_detected_at_alpha"] >= 0.95 * args.draws for s in (0.25, 0.5)),
    }

    def render(r: dict[str, Any]) -> str:
        lines = [f"Drift on the abstracts, {r['date']}: {r['cpu_flags']}. Test part: accuracy "
                 f"{r['test']['accuracy']:.3f}, macro-F1 {r['test']['macro_f1']:.3f}; reference: the run's "
                 f"{r['reference']['part']} ({r['reference']['n']} texts)"
                 + (f"; `{r['train_command']}` ({r['train_seconds']:.0f} s)" if r["train_command"] else "") + ".", "",
                 f"Prevalence: the {r['test']['n']} test rows resampled to each mix, {args.draws} draws each (means):",
                 "", "| mix | MAE, estimated shares | MAE, training shares | shares inside their 95% interval | "
                 "accuracy before -> after priors (range of the gain) | accuracy with the true shares | macro-F1 before "
                 "-> after | test p < alpha/2 |", "|---|---|---|---|---|---|---|---|"]
        for x in r["prevalence"]:
            gain = x["accuracy_gain_range"]
            lines.append(f"| {x['mix']} | {x['mae_estimated']:.4f} | {x['mae_training']:.4f} | {x['covered']:.2f} | "
                         f"{x['accuracy_before']:.3f} -> {x['accuracy_after']:.3f} ({gain[0]:+.3f} to {gain[1]:+.3f}) | "
                         f"{x['accuracy_true_shares']:.3f} | {x['macro_f1_before']:.3f} -> {x['macro_f1_after']:.3f} | {x['detected']} of {args.draws} |")
        lines += ["", f"Texts: {args.draws} draws of {args.draw_size} test texts against the reference, a share of "
                      f"them cut to their first sentence (mean {r['cut_words']['mean_before']:.0f} words -> "
                      f"{r['cut_words']['mean_after']:.0f} for a cut text); MMD, {args.permutations} permutations:", "",
                  f"| texts cut | text test p < {r['alpha']} | text test p < {r['alpha'] / 2:g} | `medclf drift` "
                  "decides shift | median p |", "|---|---|---|---|---|"]
        for x in r["covariate"]:
            lines.append(f"| {x['cut_share']:.0%} | {x['text_detected_at_alpha']} of {x['draws']} | "
                         f"{x['text_detected_at_half_alpha']} of {x['draws']} | {x['decision_shift']} of {x['draws']} | "
                         f"{x['median_p']:.3g} |")
        none = next(x for x in r["covariate"] if x["cut_share"] == 0.0)
        lines += ["", f"On the no-shift draws the prevalence test (permutation, against the reference) was below {r['alpha']} in "
                      f"{none['prevalence_false_alarms_at_alpha']} and below {r['alpha'] / 2:g} in "
                      f"{none['prevalence_false_alarms_at_half_alpha']} of {none['draws']}."]
        if "big" in r:
            b = r["big"]
            lines += ["", f"`{b['command']}` on {b['texts']:,} texts: {b['seconds']:.0f} s wall (exit {b['exit']})."]
        lines += ["", "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in r["targets"].items()) + "."]
        return "\n".join(lines) + "\n"

    return write_results(out, results, render)


if __name__ == "__main__":
    main()
