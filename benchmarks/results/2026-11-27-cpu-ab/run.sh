#!/usr/bin/env bash
# CPU A/B: medclf train (40 optimizer steps) + TextClassifier inference, old (f50ee6f) vs new (working tree), alternated.
set -e
cd /tmp/ab
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ ! -f split/train.csv ]; then
  PYTHONPATH=/work/main/benchmarks:/work/main/src python3 -c "
from compare import write_split; from pathlib import Path
print(write_split('/work/shared/data/medical-abstracts/medical_tc_test.csv','medical_abstract','condition_label',Path('/tmp/ab/split'),quick=False,quick_rows=0))"
fi
for i in 1 2; do
 for rev in old new; do
  src=$([ $rev = old ] && echo /tmp/ab/old/src || echo /work/main/src)
  s=$(date +%s.%N)
  PYTHONPATH=$src python3 -m medclf --quiet train --data split/train.csv --test-data split/test.csv --text-column text --label-column label --max-length 256 --max-steps 40 --output /tmp/ab/run-$rev-$i --overwrite >/dev/null 2>&1
  e=$(date +%s.%N)
  PYTHONPATH=$src python3 -c "
import json,time,sys
import pandas as pd
from medclf import TextClassifier
m=json.load(open('/tmp/ab/run-$rev-$i/metrics.json'))
t=m['timing']
clf=TextClassifier.load('/tmp/ab/run-$rev-$i', backend='torch')
texts=pd.read_csv('split/test.csv')['text'].astype(str).tolist()
clf.predict_proba(texts[:16]); s=time.perf_counter(); clf.predict_proba(texts); inf=len(texts)/(time.perf_counter()-s)
print(json.dumps({'rev':'$rev','i':$i,'wall':$e-$s,'loop_sps':t['train_samples_per_second'],'total':t['total_seconds'],'test_infer_sps':t['test_inference_samples_per_second'],'clf_infer_sps':inf,'macro_f1':m['test']['macro_f1']}))
"
 done
done
