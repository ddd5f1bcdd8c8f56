"""Performance by subgroup on real data: the abstracts protocol split with two slice columns derived from each
abstract, trained and reported by `medclf train --slice-columns`, so the forest plot, the report's and the card's
sections are shown on real texts.

The abstracts carry no site or patient field, so the slices are derived from the text (and said so):
- length: the abstract's words, in thirds cut at the training part's 33rd and 67th percentiles (short, medium,
  long): how long a text is changes how much of it the model reads (max length) and how much evidence it holds;
- population: 'children' where the abstract names a child population (child, children, infant(s), neonate,
  neonatal, newborn(s), pediatric, paediatric, adolescent(s)), else 'adults or unstated': a patient group a
  clinical team would ask about.

  python benchmarks/trust/subgroups.py --out bench-out/subgroups                 # finetune, the defaults
  python benchmarks/trust/subgroups.py --method embeddings --out bench-out/sg-emb
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import cpu_flags_line, read_json, run_parser, train_on_split, write_results, write_split  # noqa: E402

CHILDREN = re.compile(r"\b(child|children|infants?|neonates?|neonatal|newborns?|p(a)?ediatric|adolescents?)\b", re.I)


def derive(frame: Any, cuts: tuple[float, float]) -> Any:
    """The frame with the two derived slice columns (length by the training part's cuts, population)."""
    words = frame["text"].str.split().str.len()
    frame = frame.copy()
    frame["length"] = ["short" if w < cuts[0] else "long" if w >= cuts[1] else "medium" for w in words]
    frame["population"] = ["children" if CHILDREN.search(t) else "adults or unstated" for t in frame["text"]]
    return frame


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = run_parser(__doc__, "bench-out/subgroups").parse_args(argv)
    import pandas as pd

    from medclf.core.subgroups import subgroup_lines, worse_slices

    out = Path(args.out)
    split = write_split(args.data, args.text_column, args.label_column, out / "split", quick=args.quick, quick_rows=300)
    train = pd.read_csv(out / "split" / "train.csv", dtype={"label": str}, keep_default_na=False)
    test = pd.read_csv(out / "split" / "test.csv", dtype={"label": str}, keep_default_na=False)
    lengths = train["text"].str.split().str.len()
    cuts = (float(lengths.quantile(1 / 3)), float(lengths.quantile(2 / 3)))
    derive(train, cuts).to_csv(out / "split" / "train.csv", index=False)
    derive(test, cuts).to_csv(out / "split" / "test.csv", index=False)
    run = out / "run"
    train_command, seconds = train_on_split(args, out / "split", run, "--slice-columns", "length,population")
    metrics = read_json(run / "metrics.json")
    groups = metrics["test"]["subgroups"]
    results = {
        "date": time.strftime("%Y-%m-%d"), "cpu_flags": cpu_flags_line(),
        "command": "python benchmarks/trust/subgroups.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "train_command": train_command, "seconds": seconds,
        "data": {"file": args.data, **split}, "length_cuts_words": cuts,
        "derived": {"length": "words per abstract, thirds at the training part's 33rd/67th percentiles",
                    "population": f"'children' where the abstract matches {CHILDREN.pattern} (case-insensitive)"},
        "test": {key: metrics["test"].get(key) for key in ("n", "accuracy", "macro_f1")},
        "subgroups": groups, "worse": worse_slices(groups),
    }

    def render(r: dict[str, Any]) -> str:
        lines = [f"Performance by subgroup, {r['date']}: {r['cpu_flags']}. Data {Path(r['data']['file']).name}: "
                 f"{r['data']['split']}, {r['data']['n_train']} train / {r['data']['n_test']} test; `{r['train_command']}` "
                 f"({r['seconds']:.0f} s). Whole test part: accuracy {r['test']['accuracy']:.3f}, macro-F1 "
                 f"{r['test']['macro_f1']:.3f}.", "",
                 f"Slices derived from the text: length = {r['derived']['length']} (cuts {r['length_cuts_words'][0]:.0f} "
                 f"and {r['length_cuts_words'][1]:.0f} words); population = {r['derived']['population']}.", "",
                 *subgroup_lines(r["subgroups"]), "",
                 "Shown to work less well (macro-F1 interval entirely below the whole part's): "
                 + ("; ".join(r["worse"]) if r["worse"] else "none") + "."]
        return "\n".join(lines) + "\n"

    return write_results(out, results, render)


if __name__ == "__main__":
    main()
