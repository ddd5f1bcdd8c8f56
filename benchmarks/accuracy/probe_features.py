"""Which frozen features of the packaged encoder separate the classes best? (why fine-tuning leaves accuracy behind)

python benchmarks/accuracy/probe_features.py [--data F] [--max-length 256]

One fp32 forward pass over the protocol's split (stratified 80/20, seed 42, head-tail cut at 256
tokens), then a logistic regression (standardised features, C picked from a small grid by 5-fold
cross-validation on the training part) on three kinds of frozen features, scored on the test part:
the [CLS] vector, the pooler output (tanh(W [CLS]): what BertForSequenceClassification's head reads),
and the mean of the token vectors (what all-MiniLM-L6-v2 was trained to produce).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import data_parser  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medclf.core.labels import load_labeled
    from medclf.model.batching import collate, encode, sorted_batches
    from medclf.model.embeddings import mean_pool
    from medclf.model.modeling import default_model_dir, load_encoder, load_tokenizer
    from medclf.training.splits import stratified_split

    data = load_labeled(args.data, text_columns=[args.text_column], label_column=args.label_column, drop_empty=False)
    train_idx, test_idx = stratified_split(data.labels, fraction=0.2, seed=42, source=args.data, part="test", option="")
    source = str(default_model_dir())
    tokenizer, encoder = load_tokenizer(source), load_encoder(source).eval()
    ids = encode(tokenizer, data.texts, max_length=args.max_length, long_text="head-tail").input_ids
    feats = {k: np.zeros((len(ids), encoder.config.hidden_size), dtype=np.float32) for k in ("cls", "pooler", "mean")}
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in sorted_batches([len(i) for i in ids], 64):
            inputs = collate([ids[i] for i in batch], tokenizer.pad_token_id)
            out = encoder(**inputs)
            feats["cls"][batch] = out.last_hidden_state[:, 0].numpy()
            feats["pooler"][batch] = out.pooler_output.numpy()
            feats["mean"][batch] = mean_pool(out.last_hidden_state, inputs["attention_mask"]).numpy()
    seconds = time.perf_counter() - start
    y = np.array(data.labels)
    results = {"forward_seconds": seconds, "n_train": len(train_idx), "n_test": len(test_idx)}
    for name, x in feats.items():
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.01, 0.1, 1.0, 10.0], cv=5, max_iter=3000))
        model.fit(x[train_idx], y[train_idx])
        pred = model.predict(x[test_idx])
        results[name] = {"accuracy": accuracy_score(y[test_idx], pred),
                         "macro_f1": f1_score(y[test_idx], pred, average="macro"),
                         "C": float(model[-1].C_[0])}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
