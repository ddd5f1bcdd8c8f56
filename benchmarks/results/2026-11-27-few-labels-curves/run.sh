#!/usr/bin/env bash
# The few-labels curves as measured on 2026-11-27 (2 cores, AMD EPYC with AVX512-BF16), one system at a time.
# SetFit 1.2.0 lives in a virtual environment of its own that sees this one's packages
# (python3 -m venv --system-site-packages /tmp/sfenv && /tmp/sfenv/bin/pip install setfit==1.2.0): it runs beside
# transformers 5.24 and sentence-transformers 6.2. PRE: the `medclf pretrain` run of ../2026-11-27-pretrain/
# (1 epoch on the 2,310 training texts, labels unused).
set -euo pipefail
OUT=${OUT:-/tmp/flg/out}; PRE=${PRE:-/tmp/pt/run}; SF=${SF:-/tmp/sfenv/bin/python}
B="python3 benchmarks/accuracy/few_labels.py --out $OUT --pretrained $PRE --setfit-python $SF"
# 8 per class, 3 draws, every system (SetFit with its defaults: 80 contrastive steps of 16 pairs here)
$B --sizes 8 --draws 3 --systems zero-shot-names zero-shot-descriptions embeddings embeddings-desc finetune \
    finetune-desc finetune-pretrained setfit
# 16 per class, draw 0; SetFit capped at the 80 steps it takes at 8 per class (its default, 320 steps, would take
# about 40 minutes per draw on this CPU)
$B --sizes 16 --draws 1 --setfit-max-steps 80 --systems embeddings embeddings-desc finetune finetune-desc \
    finetune-pretrained setfit
python3 benchmarks/accuracy/few_labels.py --render "$OUT"
