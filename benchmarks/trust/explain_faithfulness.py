"""Faithfulness of explanations: deleting the k top-scored words against deleting k random words.

python benchmarks/trust/explain_faithfulness.py --run RUN_DIR [--texts N] [--k 5] [--methods integrated-gradients,occlusion]
    [--out bench-out/faithfulness]

Reads the run's test part (the rows of predictions_test.csv, looked up in the run's data file, so the texts
are exactly the test texts the run never trained on), takes a seeded sample of --texts of them, and for each
method explains the predicted label, then takes out the k words with the highest scores, or k words chosen
at random (seeded), and records how much the predicted label's probability falls
(`medclf.inference.explain.deletion_check`). If the explanations point at what the model uses, the first fall is
the larger. Reports both means, the share of texts where top-k beat random-k, and seconds per text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import write_result  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--texts", type=int, default=100)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--methods", default="integrated-gradients,occlusion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/faithfulness")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd

    from medclf import TextClassifier
    from medclf.core.columns import join_texts
    from medclf.core.tables import read_table
    from medclf.inference.explain import deletion_check

    run = Path(args.run)
    info = json.loads((run / "train_config.json").read_text())["run"]
    table = read_table(info["data_file"])
    rows = pd.read_csv(run / "predictions_test.csv")["row"].to_numpy()
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(rows, size=min(args.texts, len(rows)), replace=False))
    texts = [t for t in join_texts(table.iloc[sample], info["text_columns"]) if t is not None]
    clf = TextClassifier.load(run, backend="torch")
    result = {"run": str(run), "texts": len(texts), "k": args.k, "steps": args.steps, "methods": {}}
    for method in args.methods.split(","):
        start = time.perf_counter()
        check = deletion_check(clf, texts, k=args.k, method=method, seed=args.seed, steps=args.steps)
        check["seconds_per_text"] = (time.perf_counter() - start) / max(1, len(texts))
        result["methods"][method] = check
        print(json.dumps({method: check}), flush=True)
    lines = ["| method | texts | mean fall, top-k words deleted | mean fall, k random words deleted | s per text |",
             "|---|---|---|---|---|"]
    for method, c in result["methods"].items():
        lines.append(f"| {method} | {c['texts']} | {c['mean_drop_top_k']:.4f} | {c['mean_drop_random_k']:.4f} | "
                     f"{c['seconds_per_text']:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    write_result(out / "results.json", result)


if __name__ == "__main__":
    main()
