"""Offline: do label descriptions as a logit prior help the few-shot embeddings method? (cached features)"""
import sys

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, "/work/main/benchmarks")
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from medclf.core.tasks import task_for
from medclf.model.batching import encode
from medclf.model.embeddings import C_GRID, EmbeddingClassifier, embed_texts, fit_logistic
from medclf.model.modeling import load_encoder, load_tokenizer, resolve_model

z = np.load("/tmp/lq/embeddings.npz")
X, Xt = z["train"], z["test"]
train = pd.read_csv("/tmp/lq/split/train.csv", dtype={"label": str}, keep_default_na=False)
test = pd.read_csv("/tmp/lq/split/test.csv", dtype={"label": str}, keep_default_na=False)
labels = sorted(train.label.unique())
y = np.array([labels.index(v) for v in train.label])
yt = np.array([labels.index(v) for v in test.label])
d = pd.read_csv("/work/main/benchmarks/data/abstracts_label_descriptions.csv", dtype={"label": str})
src = resolve_model("default")
tok = load_tokenizer(src)
net = EmbeddingClassifier(load_encoder(src), ["x"])
D = embed_texts(net, encode(tok, d.description.tolist(), max_length=256).input_ids, batch_size=None, pad_id=0, device=torch.device("cpu"))
dy = np.array([labels.index(v) for v in d.label])
C = np.stack([D[dy == i].mean(0) for i in range(len(labels))])
C /= np.linalg.norm(C, axis=1, keepdims=True)
task = task_for(False)
def zs(x):
    return 20 * x @ C.T
def cv_f1(x, yy, c, alpha, extra=None):
    k = int(max(2, min(5, np.bincount(yy).min())))
    oof = np.zeros((len(yy), len(labels)))
    for a, b in StratifiedKFold(k, shuffle=True, random_state=0).split(x, yy):
        xa, ya = x[a], yy[a]
        if extra is not None:
            xa, ya = np.concatenate([xa, extra[0]]), np.concatenate([ya, extra[1]])
        w, bb = fit_logistic(xa, ya, len(labels), c=c, class_weight=None, seed=0)
        oof[b] = x[b] @ w.T + bb + alpha * zs(x[b])
    return f1_score(yy, oof.argmax(1), average="macro")
def run(x, yy, alphas, extra=None):
    best = max(((cv_f1(x, yy, c, a, extra), c, a) for c in C_GRID for a in alphas), key=lambda t: t[0])
    _, c, a = best
    xa, ya = (x, yy) if extra is None else (np.concatenate([x, extra[0]]), np.concatenate([yy, extra[1]]))
    w, bb = fit_logistic(xa, ya, len(labels), c=c, class_weight=None, seed=0)
    return f1_score(yt, (Xt @ w.T + bb + a * zs(Xt)).argmax(1), average="macro"), c, a
print("zero-shot", f1_score(yt, zs(Xt).argmax(1), average="macro"))
for k in (8, 16, 32):
    for draw in range(3):
        rows = np.concatenate([train.index[train.label == lab].to_series().sample(frac=1.0, random_state=draw).head(k).to_numpy() for lab in labels])
        x, yy = X[rows], y[rows]
        r = {"lr": run(x, yy, [0.0]), "lr+desc rows": run(x, yy, [0.0], (D, dy)),
             "lr+prior": run(x, yy, [0.0, 0.25, 0.5, 1.0, 2.0]), "lr+desc+prior": run(x, yy, [0.0, 0.25, 0.5, 1.0, 2.0], (D, dy))}
        print(k, draw, {n: (round(v[0], 3), v[1], v[2]) for n, v in r.items()}, flush=True)
