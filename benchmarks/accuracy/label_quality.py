"""Label quality and annotation order, measured on the medical-abstracts protocol split.

audit: flip a share of the training part's labels at random (seeded; each to another class drawn uniformly), run
`medclf audit` (5 folds) on the noisy table, and score how well its label quality finds the flipped rows:
precision and recall at k = the number flipped (the k lowest scores), the same for the rows cleanlab flags, and
the ROC-AUC of the score. Then `medclf train` on the noisy table, on it with the k lowest-scored rows removed, and on
the clean table, all tested on the protocol's test part: how much of the macro-F1 lost to the noise the audit wins
back.

suggest: a simulated annotation loop: START labelled rows drawn at random from the training part (one of each
class among them), then ROUNDS rounds
that each reveal the labels of STEP more rows picked by a strategy (medclf.core.selection.rank, the code behind
`medclf suggest`) from the rest, the classifier refitted each round. The classifier is `--method embeddings`'s
(logistic regression on the packaged encoder's frozen, mean-pooled embeddings; C picked by cross-validation on the
labelled rows, as medclf does with few labels); the embeddings of the 2,888 abstracts are computed once and shared
by every round, strategy and seed (a real loop recomputes nothing else either: the encoder is frozen). Probabilities
are not temperature-scaled in the loop. `--finetune-at N`: also `medclf train` (fine-tuning) on the first N rows
random and the best strategy picked, seed 0.

Writes OUT/audit.json, OUT/suggest.json, OUT/results.md and OUT/suggest_curves.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import data_parser  # noqa: E402

STRATEGIES = ("random", "margin", "entropy", "diverse")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = data_parser(__doc__)
    parser.add_argument("--out", default="runs/label-quality")
    parser.add_argument("--part", choices=("audit", "suggest", "all"), default="all")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.10])
    parser.add_argument("--audit-methods", nargs="+", default=["embeddings"], choices=("embeddings", "finetune"))
    parser.add_argument("--retrain-method", default="embeddings", choices=("embeddings", "finetune"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--start", type=int, default=50)
    parser.add_argument("--step", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--finetune-at", type=int, nargs="*", default=[], help="label counts to fine-tune at (seed 0)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 300-row split, small loop")
    parser.add_argument("--render", metavar="OUT", help="only rewrite OUT's table and plot")
    args = parser.parse_args(argv)
    if args.render:
        return render(Path(args.render))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from bench_common import write_split

    split = write_split(args.data, args.text_column, args.label_column, out / "split", quick=args.quick, quick_rows=300)
    (out / "split.json").write_text(json.dumps(split, indent=2) + "\n")
    if args.part in ("audit", "all"):
        _write(out / "audit.json", run_audits(out, args))
    if args.part in ("suggest", "all"):
        _write(out / "suggest.json", run_loop(out, args))
    return render(out)


def _write(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------ audit


def flip_labels(frame: Any, share: float, seed: int) -> tuple[Any, list[int]]:
    """A copy with round(share x rows) labels flipped to another class (uniformly), and the flipped positions."""
    rng = np.random.default_rng(seed)
    classes = sorted(frame["label"].unique())
    flipped = sorted(rng.choice(len(frame), size=round(share * len(frame)), replace=False).tolist())
    noisy = frame.copy()
    for i in flipped:
        others = [c for c in classes if c != noisy.at[i, "label"]]
        noisy.at[i, "label"] = others[rng.integers(len(others))]
    return noisy, flipped


def medclf(args: list[str], log: Path) -> float:
    """Run one medclf command in its own process; its wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.call([sys.executable, "-m", "medclf", "--quiet", *args], stdout=handle, stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if code != 0:
        raise SystemExit(f"medclf {args[0]} failed ({code}); see {log}")
    return time.perf_counter() - start


def test_macro_f1(run: Path) -> dict[str, float]:
    test = json.loads((run / "metrics.json").read_text())["test"]
    return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
            "macro_f1_low": test["intervals"]["macro_f1"]["low"], "macro_f1_high": test["intervals"]["macro_f1"]["high"]}


def train_args(data: Path, test: Path, run: Path, method: str, model: str, quick: bool) -> list[str]:
    extra = ["--epochs", "1", "--max-steps", "4"] if quick and method == "finetune" else []
    return ["train", "--data", str(data), "--test-data", str(test), "--text-column", "text", "--label-column", "label",
            "--output", str(run), "--overwrite", "--method", method, "--model", model, *extra]


def run_audits(out: Path, args: Any) -> dict[str, Any]:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    clean = pd.read_csv(out / "split" / "train.csv", dtype={"label": str}, keep_default_na=False)
    test_csv = out / "split" / "test.csv"
    runs = out / "runs"
    result: dict[str, Any] = {"retrain_method": args.retrain_method, "levels": []}
    seconds = medclf(train_args(out / "split" / "train.csv", test_csv, runs / "clean", args.retrain_method, args.model,
                                args.quick), out / "logs" / "train-clean.log")
    result["clean"] = {**test_macro_f1(runs / "clean"), "seconds": seconds}
    for share in args.noise:
        noisy, flipped = flip_labels(clean, share, seed=0)
        tag = f"noise{round(share * 100)}"
        noisy_csv = out / f"{tag}.csv"
        noisy.to_csv(noisy_csv, index=False)
        level: dict[str, Any] = {"share": share, "flipped": len(flipped), "audits": []}
        k = len(flipped)
        is_flipped = np.zeros(len(noisy), dtype=bool)
        is_flipped[flipped] = True
        for method in args.audit_methods:
            audit_dir = runs / f"audit-{tag}-{method}"
            extra = ["--max-steps", "4"] if args.quick and method == "finetune" else []
            seconds = medclf(["audit", "--data", str(noisy_csv), "--text-column", "text", "--label-column", "label",
                              "--method", method, "--model", args.model, "--output", str(audit_dir), "--overwrite",
                              *extra], out / "logs" / f"audit-{tag}-{method}.log")
            oof = pd.read_parquet(audit_dir / "out_of_fold.parquet").sort_values("row")
            quality = oof["label_quality"].to_numpy()
            lowest = np.argsort(quality, kind="stable")[:k]
            flagged = oof["is_issue"].to_numpy()
            hits = int(is_flipped[lowest].sum())
            audit = {"method": method, "seconds": seconds, "precision_at_k": hits / k, "recall_at_k": hits / k,
                     "roc_auc": float(roc_auc_score(is_flipped, -quality)), "flagged": int(flagged.sum()),
                     "flagged_precision": float(is_flipped[flagged].mean()) if flagged.any() else None,
                     "flagged_recall": float(is_flipped[flagged].sum() / k)}
            # retrain without the k lowest-scored rows
            cleaned_csv = out / f"{tag}-{method}-cleaned.csv"
            noisy.drop(index=noisy.index[lowest]).to_csv(cleaned_csv, index=False)
            retrained = runs / f"train-{tag}-{method}-cleaned"
            medclf(train_args(cleaned_csv, test_csv, retrained, args.retrain_method, args.model, args.quick),
                   out / "logs" / f"train-{tag}-{method}-cleaned.log")
            audit["retrained_top_k_removed"] = test_macro_f1(retrained)
            level["audits"].append(audit)
            print(json.dumps({"level": share, **audit}), flush=True)
        medclf(train_args(noisy_csv, test_csv, runs / f"train-{tag}-noisy", args.retrain_method, args.model, args.quick),
               out / "logs" / f"train-{tag}-noisy.log")
        level["noisy"] = test_macro_f1(runs / f"train-{tag}-noisy")
        lost = result["clean"]["macro_f1"] - level["noisy"]["macro_f1"]
        for audit in level["audits"]:
            won = audit["retrained_top_k_removed"]["macro_f1"] - level["noisy"]["macro_f1"]
            audit["share_of_loss_recovered"] = won / lost if lost > 0 else None
        result["levels"].append(level)
    return result


# ------------------------------------------------------------------ suggest


def embed_split(out: Path, model: str) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Frozen embeddings of the training and test parts, as `--method embeddings` computes them (cached in OUT)."""
    cache = out / "embeddings.npz"
    import pandas as pd

    train = pd.read_csv(out / "split" / "train.csv", dtype={"label": str}, keep_default_na=False)
    test = pd.read_csv(out / "split" / "test.csv", dtype={"label": str}, keep_default_na=False)
    if not cache.exists():
        import torch

        from medclf.config import TrainConfig
        from medclf.model.batching import encode
        from medclf.model.embeddings import EmbeddingClassifier, embed_texts
        from medclf.model.modeling import load_encoder, load_tokenizer, resolve_model

        source = resolve_model(model)
        tokenizer = load_tokenizer(source)
        net = EmbeddingClassifier(load_encoder(source), ["x"])
        max_length = TrainConfig().max_length

        def vectors(texts: list[str]) -> np.ndarray:
            ids = encode(tokenizer, texts, max_length=max_length).input_ids
            return embed_texts(net, ids, batch_size=None, pad_id=tokenizer.pad_token_id or 0, device=torch.device("cpu"))

        np.savez(cache, train=vectors(train["text"].tolist()), test=vectors(test["text"].tolist()))
    saved = np.load(cache)
    return saved["train"], train["label"].tolist(), saved["test"], test["label"].tolist()


def fit_predict(x: np.ndarray, y: np.ndarray, n_labels: int, pool: np.ndarray, test: np.ndarray,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """--method embeddings with few labels: C by cross-validated macro-F1 on the labelled rows, then the fit."""
    from medclf.core.tasks import task_for
    from medclf.model.embeddings import C_GRID, fit_logistic
    from medclf.training.frozen import cross_validated_f1

    task = task_for(False)
    labels = [str(i) for i in range(n_labels)]
    scores = [cross_validated_f1(x, y, labels, task, c=c, class_weight=None, seed=seed) for c in C_GRID]
    c = C_GRID[int(np.argmax([-1.0 if s is None else s for s in scores]))]
    weight, bias = fit_logistic(x, y, n_labels, c=c, class_weight=None, seed=seed)
    return task.probabilities(pool @ weight.T + bias), task.probabilities(test @ weight.T + bias)


def first_rows(y: np.ndarray, start: int, seed: int) -> list[int]:
    """The seed set: `start` rows at random, one of each class among them (a team's first batch covers every class)."""
    rng = np.random.default_rng(1000 + seed)
    one_each = [int(rng.choice(np.flatnonzero(y == c))) for c in np.unique(y)]
    rest = rng.permutation(np.setdiff1d(np.arange(len(y)), one_each))[: start - len(one_each)]
    return one_each + rest.tolist()


def run_loop(out: Path, args: Any) -> dict[str, Any]:
    from sklearn.metrics import f1_score

    from medclf.core.selection import rank

    x, y_names, x_test, y_test_names = embed_split(out, args.model)
    classes = sorted(set(y_names))
    y = np.array([classes.index(v) for v in y_names])
    y_test = np.array([classes.index(v) for v in y_test_names])
    start, step, rounds = (20, 20, 3) if args.quick else (args.start, args.step, args.rounds)
    curves: dict[str, list[list[float]]] = {s: [] for s in STRATEGIES}
    picked_by: dict[tuple[str, int], list[int]] = {}
    seconds: dict[str, float] = {s: 0.0 for s in STRATEGIES}
    for seed in range(args.seeds):
        first = first_rows(y, start, seed)
        for strategy in STRATEGIES:
            labelled = list(first)
            curve = []
            for r in range(rounds + 1):
                rest = np.setdiff1d(np.arange(len(y)), labelled)
                pool_probs, test_probs = fit_predict(x[labelled], y[labelled], len(classes), x[rest], x_test, seed)
                curve.append(float(f1_score(y_test, test_probs.argmax(axis=1), average="macro")))
                if r == rounds:
                    break
                began = time.perf_counter()
                ranking = rank(pool_probs, n=step, strategy=strategy, embeddings=x[rest], labelled=x[labelled],
                               seed=seed * 100 + r)
                seconds[strategy] += time.perf_counter() - began
                labelled += rest[ranking.order].tolist()
            curves[strategy].append(curve)
            picked_by[(strategy, seed)] = labelled
            print(json.dumps({"seed": seed, "strategy": strategy, "curve": [round(v, 4) for v in curve]}), flush=True)
    sizes = [start + step * r for r in range(rounds + 1)]
    summary = {s: {"mean": np.mean(curves[s], axis=0).tolist(), "sd": np.std(curves[s], axis=0, ddof=1).tolist()
                   if args.seeds > 1 else [0.0] * len(sizes), "each": curves[s], "ranking_seconds": seconds[s]}
               for s in STRATEGIES}
    target = summary["random"]["mean"][-1]
    for s in STRATEGIES:
        reach = next((n for n, v in zip(sizes, summary[s]["mean"]) if v >= target), None)
        summary[s]["labels_to_reach_random_final"] = reach
        summary[s]["share_of_random_labels"] = None if reach is None else reach / sizes[-1]
    result: dict[str, Any] = {"sizes": sizes, "seeds": args.seeds, "strategies": summary, "finetune": []}
    best = min((s for s in STRATEGIES if s != "random"),
               key=lambda s: (summary[s]["labels_to_reach_random_final"] or 10**9, -summary[s]["mean"][-1]))
    result["best_strategy"] = best
    import pandas as pd

    train = pd.read_csv(out / "split" / "train.csv", dtype={"label": str}, keep_default_na=False)
    for n in args.finetune_at:
        for strategy in ("random", best):
            rows = picked_by[(strategy, 0)][:n]
            data = out / f"loop-{strategy}-{n}.csv"
            train.iloc[rows].to_csv(data, index=False)
            run = out / "runs" / f"loop-finetune-{strategy}-{n}"
            wall = medclf(train_args(data, out / "split" / "test.csv", run, "finetune", args.model, args.quick),
                          out / "logs" / f"loop-finetune-{strategy}-{n}.log")
            result["finetune"].append({"strategy": strategy, "labels": n, "seconds": wall, **test_macro_f1(run)})
            print(json.dumps(result["finetune"][-1]), flush=True)
    return result


# ------------------------------------------------------------------ report


def render(out: Path) -> dict[str, Any]:
    lines: list[str] = []
    found: dict[str, Any] = {}
    if (out / "audit.json").exists():
        audit = found["audit"] = json.loads((out / "audit.json").read_text())
        clean = audit["clean"]["macro_f1"]
        lines += [f"## audit (retraining with --method {audit['retrain_method']}; clean training part: test macro-F1 "
                  f"{clean:.4f})", "",
                  "| flipped | audit method | ROC-AUC | precision = recall at k | flagged (precision, recall) | "
                  "test macro-F1 noisy | top k removed | share of the loss recovered | audit s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for level in audit["levels"]:
            for a in level["audits"]:
                recovered = a["share_of_loss_recovered"]
                lines.append(
                    f"| {level['share']:.0%} ({level['flipped']}) | {a['method']} | {a['roc_auc']:.3f} | "
                    f"{a['precision_at_k']:.3f} | {a['flagged']} ({_f(a['flagged_precision'])}, {a['flagged_recall']:.3f}) | "
                    f"{level['noisy']['macro_f1']:.4f} | {a['retrained_top_k_removed']['macro_f1']:.4f} | "
                    f"{'n/a (no loss)' if recovered is None else f'{recovered:.2f}'} | {a['seconds']:.0f} |")
        lines.append("")
    if (out / "suggest.json").exists():
        loop = found["suggest"] = json.loads((out / "suggest.json").read_text())
        sizes = loop["sizes"]
        lines += [f"## suggest (test macro-F1, mean of {loop['seeds']} seeds; sd in brackets)", "",
                  "| strategy | " + " | ".join(str(n) for n in sizes) + " | labels to reach random's final | share |",
                  "|---|" + "---|" * len(sizes) + "---|---|"]
        for s, v in loop["strategies"].items():
            reach, share = v["labels_to_reach_random_final"], v["share_of_random_labels"]
            lines.append(f"| {s} | " + " | ".join(f"{m:.3f} ({d:.3f})" for m, d in zip(v["mean"], v["sd"]))
                         + f" | {reach if reach is not None else 'not reached'} | {_f(share)} |")
        for f in loop["finetune"]:
            lines.append(f"\nfine-tuned on the first {f['labels']} rows {f['strategy']} picked (seed 0): test macro-F1 "
                         f"{f['macro_f1']:.4f} ({f['macro_f1_low']:.4f}-{f['macro_f1_high']:.4f}), {f['seconds']:.0f} s")
        plot(loop, out / "suggest_curves.png")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return found


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plot(loop: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s, v in loop["strategies"].items():
        mean, sd = np.array(v["mean"]), np.array(v["sd"])
        ax.plot(loop["sizes"], mean, marker="o", label=s, linestyle="--" if s == "random" else "-")
        ax.fill_between(loop["sizes"], mean - sd, mean + sd, alpha=0.15)
    ax.set_xlabel("labelled abstracts")
    ax.set_ylabel("test macro-F1 (mean of seeds, band: sd)")
    ax.set_title("Annotation order, --method embeddings, medical abstracts")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
