"""Long documents whose evidence is not at the start: truncate vs head-tail vs chunk, in one run.

python benchmarks/accuracy/long_docs.py [--out bench-out/long-docs] [--max-length 64] [--words 350] [--max-chunks 16]
    [--model default] [--epochs 3] [--quick N]

Builds the set from the packaged demo snippets (invented, no real text): each snippet is placed at
a random sentence boundary inside about --words words of neutral clinical boilerplate (generated
from templates: identity checks, medication reconciliation, vitals, social history, scheduling;
nothing that names a specialty). Writes OUT/bare.csv (the snippets alone) and OUT/long.csv (same
rows, same labels, same order, so the seeded split is the same), then trains, one after another:
bare snippets with truncate, and the long documents with truncate, head-tail, chunk with mean
pooling and chunk with max pooling, all at --max-length. Reports test macro-F1, accuracy, training and test-inference seconds (from each
run's metrics.json), and each mode's macro-F1 as a share of the bare snippets'.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import demo_frame, write_result  # noqa: E402

BOILERPLATE = [
    "Patient identity confirmed with two identifiers at {time}.",
    "Medication list reviewed and reconciled with the {source}.",
    "Allergies: {allergy}.",
    "Vital signs recorded by nursing staff at {time}.",
    "Social history: {smoking}, {living}, {alcohol}.",
    "Advance directive status was {directive}.",
    "Interpreter services were {interp}.",
    "Insurance and contact details were updated at registration.",
    "The patient was seen in room {room} of the {unit}.",
    "Fall risk screening was completed and documented.",
    "Immunization record reviewed; no updates needed today.",
    "Follow-up appointment to be scheduled by the front desk within {weeks} weeks.",
    "Education materials were provided and questions were answered.",
    "The note was dictated and reviewed for accuracy.",
    "Consent for today's visit was obtained verbally.",
    "Pain score was documented per clinic protocol.",
    "Preferred pharmacy confirmed as the {pharmacy}.",
    "Family history was reviewed and is unchanged from the prior visit.",
    "Review of systems was completed on the intake form.",
    "The patient arrived {arrival} for the appointment.",
]
FILLS = {
    "time": ["08:10", "09:45", "11:20", "13:05", "14:30", "16:15"],
    "source": ["pharmacy record", "patient's own list", "prior discharge summary", "primary care record"],
    "allergy": ["no known drug allergies", "penicillin (rash)", "sulfa drugs", "latex", "none reported"],
    "smoking": ["never smoker", "former smoker", "current smoker"],
    "living": ["lives alone", "lives with family", "lives with a partner"],
    "alcohol": ["no alcohol use", "occasional alcohol", "social drinking"],
    "directive": ["reviewed", "not on file", "discussed"],
    "interp": ["not required", "offered and declined", "used by telephone"],
    "room": ["3", "7", "12", "15"],
    "unit": ["outpatient clinic", "day unit", "ambulatory center"],
    "weeks": ["2", "4", "6", "8"],
    "pharmacy": ["hospital pharmacy", "community pharmacy", "mail-order pharmacy"],
    "arrival": ["on time", "early", "a few minutes late"],
}


def boilerplate_sentence(rng: random.Random) -> str:
    template = rng.choice(BOILERPLATE)
    return template.format(**{k: rng.choice(v) for k, v in FILLS.items()})


def long_document(snippet: str, rng: random.Random, words: int) -> str:
    sentences: list[str] = []
    while sum(len(s.split()) for s in sentences) < words:
        sentences.append(boilerplate_sentence(rng))
    sentences.insert(rng.randrange(len(sentences) + 1), snippet)
    return " ".join(sentences)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-out/long-docs")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--words", type=int, default=350)
    parser.add_argument("--max-chunks", type=int, default=16)
    parser.add_argument("--model", default="default")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", type=int, default=None, help="use only the first N snippets (smoke test)")
    parser.add_argument("--modes", default="bare,truncate,head-tail,chunk,chunk-max",
                        help="comma-separated: bare, truncate, head-tail, chunk (mean pooling), chunk-max")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = demo_frame(args.quick)
    rng = random.Random(args.seed)
    long = frame.assign(text=[long_document(t, rng, args.words) for t in frame["text"]])
    frame.to_csv(out / "bare.csv", index=False)
    long.to_csv(out / "long.csv", index=False)

    rows = {}
    for mode in args.modes.split(","):
        data = out / ("bare.csv" if mode == "bare" else "long.csv")
        long_text = "truncate" if mode == "bare" else mode.removesuffix("-max")
        pool = "max" if mode.endswith("-max") else "mean"
        run = out / f"run-{mode}"
        cmd = [sys.executable, "-m", "medclf", "--quiet", "train", "--data", str(data), "--text-column", "text",
               "--label-column", "specialty", "--model", args.model, "--max-length", str(args.max_length),
               "--long-text", long_text, "--max-chunks", str(args.max_chunks), "--pool", pool, "--epochs", str(args.epochs),
               "--output", str(run), "--overwrite"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        metrics = json.loads((run / "metrics.json").read_text())
        trunc = metrics["data"]["truncation"]["test"] if "truncation" in metrics["data"] else metrics["truncation"]["test"]
        rows[mode] = {
            "data": data.name, "long_text": long_text if long_text != "chunk" else f"chunk ({pool})",
            "accuracy": metrics["test"]["accuracy"], "macro_f1": metrics["test"]["macro_f1"],
            "train_seconds": metrics["timing"]["train_seconds"] + metrics["timing"].get("head_init_seconds", 0.0),
            "test_inference_seconds": metrics["timing"]["test_inference_seconds"],
            "test_texts": metrics["test"]["n"], "mean_tokens": trunc["mean_tokens"],
            "mean_windows": trunc.get("mean_windows", 1.0), "share_tokens_lost": trunc["share_tokens_lost"],
        }
        print(json.dumps({mode: rows[mode]}), flush=True)
    bare = rows.get("bare", {}).get("macro_f1")
    for row in rows.values():
        row["share_of_bare_macro_f1"] = row["macro_f1"] / bare if bare else None
    lines = ["| data | --long-text | macro-F1 | accuracy | share of bare macro-F1 | train s | test inference s | mean tokens | windows/text | tokens never seen |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, r in rows.items():
        share = f"{r['share_of_bare_macro_f1']:.2f}" if r["share_of_bare_macro_f1"] is not None else ""
        lines.append(f"| {r['data']} | {r['long_text']} | {r['macro_f1']:.3f} | {r['accuracy']:.3f} | {share} | {r['train_seconds']:.0f} "
                     f"| {r['test_inference_seconds']:.1f} | {r['mean_tokens']:.0f} | {r['mean_windows']:.1f} | {100 * r['share_tokens_lost']:.0f}% |")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    write_result(out / "results.json", {"max_length": args.max_length, "words": args.words, "max_chunks": args.max_chunks,
                                        "epochs": args.epochs, "model": args.model, "rows": rows})


if __name__ == "__main__":
    main()
