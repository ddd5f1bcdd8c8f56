#!/usr/bin/env bash
# A first point of issue 17's learning curves (not the full grid): 32 labelled abstracts per class (one seeded draw
# from the protocol's training part), tested on the protocol's 578 test abstracts; medclf's methods side by side,
# fine-tuning from the packaged encoder and from the encoder after `medclf pretrain` on the training part's texts.
# Needs: SPLIT (compare.py's split folder: train.csv, test.csv with text,label) and PRE (a `medclf pretrain` run).
set -euo pipefail
SPLIT=${SPLIT:-/tmp/ab/split}; PRE=${PRE:-/tmp/pt/run}; OUT=${OUT:-/tmp/fl}; K=${K:-32}
HERE=$(cd "$(dirname "$0")" && pwd); DESC=$HERE/../../data/abstracts_label_descriptions.csv
mkdir -p "$OUT"
python3 - "$SPLIT/train.csv" "$OUT/k$K.csv" "$K" <<'PY'
import sys, pandas as pd
frame = pd.read_csv(sys.argv[1], dtype={"label": str})
frame.groupby("label", group_keys=False).sample(n=int(sys.argv[3]), random_state=0).to_csv(sys.argv[2], index=False)
PY
common=(--data "$OUT/k$K.csv" --test-data "$SPLIT/test.csv" --text-column text --label-column label --overwrite)
run() { name=$1; shift; /usr/bin/time -f "$name wall %e s" python3 -m medclf --quiet train "${common[@]}" --output "$OUT/$name" "$@" >/dev/null 2>>"$OUT/times.txt"; }
: > "$OUT/times.txt"
run embeddings --method embeddings
run embeddings-desc --method embeddings --label-descriptions "$DESC"
run finetune
run finetune-desc --label-descriptions "$DESC"
run finetune-pretrained --model "$PRE/model"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for run in ("embeddings", "embeddings-desc", "finetune", "finetune-desc", "finetune-pretrained"):
    m = json.loads((out / run / "metrics.json").read_text())
    print(json.dumps({"run": run, "accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"],
                      "interval": m["test"]["intervals"]["macro_f1"], "few_shot": m["few_shot"],
                      "selected": m["selected"], "train_seconds": m["timing"]["train_seconds"],
                      "total_seconds": m["timing"]["total_seconds"]}))
PY
cat "$OUT/times.txt"
