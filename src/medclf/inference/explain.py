"""Which words made the model say what it said: per-word attribution for one label.

- integrated-gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks"): the
  input word embeddings are moved in `steps` straight steps from a baseline (every non-special token
  replaced by [PAD]'s embedding) to the text, the gradient of the label's probability is averaged
  along the way and multiplied by (embedding - baseline), then summed over the embedding dimensions.
  The token scores add up to p(text) - p(baseline) ("completeness"; `delta` reports the gap).
- occlusion: a word's score is how much the label's probability falls when that word's tokens are
  taken out of the input. One forward pass per word; works with every backend.

Tokens are put back on words (maximal runs of non-space characters) through their character offsets;
a word the model never read (cut by --max-length) gets no score (`seen: false`). The texts are cut or
windowed exactly as the run predicts them, and the probabilities are the run's (calibrated) ones.
Nothing here logs text: the words come back to the caller only.
"""

from __future__ import annotations

import html
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medclf.errors import MedclfError
from medclf.model.batching import collate, pool_logits_torch
from medclf.model.modeling import embeds_forward_inputs

METHODS = ("integrated-gradients", "occlusion")
DEFAULT_STEPS = 32


@dataclass
class Explanation:
    """Per-word scores for one text and one label (positive: the word raised the label's probability)."""

    label: str
    probability: float
    method: str
    probabilities: dict[str, float]
    words: list[dict[str, Any]] = field(default_factory=list)
    """{"word", "start", "end", "score", "seen"} per word, in text order; score None where not seen."""
    delta: float | None = None
    """integrated-gradients: |sum of scores - (p(text) - p(baseline))|, the approximation error."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def word_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def _token_words(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """For each token, the index of the word holding its first character (-1 for special tokens)."""
    starts = [s for s, _ in spans]
    out = []
    for a, b in offsets:
        if a == b:
            out.append(-1)
            continue
        i = int(np.searchsorted(starts, a, side="right")) - 1
        out.append(i if i >= 0 and a < spans[i][1] else -1)
    return out


class Explainer:
    """Explanations from a loaded TextClassifier (integrated gradients need its PyTorch model)."""

    def __init__(self, clf: Any) -> None:
        self.clf = clf

    def _target(self, probs: np.ndarray, target: str | None) -> int:
        labels = self.clf.labels
        if target is None:
            return int(probs.argmax())
        if target not in labels:
            raise MedclfError(f"--target {target!r} is not a label of this model; its labels are: {', '.join(labels)}.")
        return labels.index(target)

    def _encode(self, text: str) -> tuple[list[list[int]], list[list[int]]]:
        """The text's sequences (one, or its windows) as the run cuts them, and each token's word index."""
        enc = self.clf.encode([text], token_offsets=True)
        spans = word_spans(text)
        assert enc.token_offsets is not None
        return enc.input_ids, [_token_words(offsets, spans) for offsets in enc.token_offsets]

    def _probabilities(self, variants: list[list[list[int]]]) -> np.ndarray:
        """The run's probabilities for texts given as their sequences (any backend), in order."""
        clf = self.clf
        logits = clf.sequence_logits([seq for variant in variants for seq in variant])
        owner = [v for v, variant in enumerate(variants) for _ in variant]
        return clf.probabilities(clf.document_logits(logits, owner if clf.long_text == "chunk" else None,
                                                     len(variants)))

    def explain(self, text: str, *, method: str = "integrated-gradients", target: str | None = None,
                steps: int = DEFAULT_STEPS) -> Explanation:
        if method not in METHODS:
            raise MedclfError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
        if not isinstance(text, str) or not text.strip():
            raise MedclfError("explain needs a non-empty text.")
        if not isinstance(steps, int) or not 2 <= steps <= 512:
            raise MedclfError(f"steps must be a whole number from 2 to 512, not {steps!r}.")
        sequences, token_words = self._encode(text)
        probs = self._probabilities([sequences])[0]
        k = self._target(probs, target)
        spans = word_spans(text)
        delta = None
        if method == "occlusion":
            scores = self._occlusion(sequences, token_words, len(spans), k, float(probs[k]))
        else:
            scores, delta = self._integrated_gradients(sequences, token_words, len(spans), k, steps)
        seen = set(w for words in token_words for w in words if w >= 0)
        words = [{"word": text[a:b], "start": a, "end": b, "score": float(scores[i]) if i in seen else None,
                  "seen": i in seen} for i, (a, b) in enumerate(spans)]
        return Explanation(label=self.clf.labels[k], probability=float(probs[k]), method=method,
                           probabilities={lab: float(p) for lab, p in zip(self.clf.labels, probs)}, words=words,
                           delta=delta)

    def without(self, sequences: list[list[int]], token_words: list[list[int]], drop: set[int]) -> list[list[int]]:
        """The sequences with the tokens of the words in `drop` taken out."""
        return [[t for t, w in zip(seq, words) if w not in drop] for seq, words in zip(sequences, token_words)]

    def _occlusion(self, sequences: list[list[int]], token_words: list[list[int]], n_words: int, k: int,
                   base: float) -> np.ndarray:
        seen = sorted(set(w for words in token_words for w in words if w >= 0))
        scores = np.zeros(n_words)
        if seen:
            probs = self._probabilities([self.without(sequences, token_words, {w}) for w in seen])
            scores[seen] = base - probs[:, k]
        return scores

    def _integrated_gradients(self, sequences: list[list[int]], token_words: list[list[int]], n_words: int, k: int,
                              steps: int) -> tuple[np.ndarray, float]:
        clf = self.clf
        model = clf.torch_model()
        device = next(model.parameters()).device
        inputs = {key: v.to(device) for key, v in collate(sequences, clf.pad_id).items()}
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        special = torch.tensor([[w < 0 for w in words] + [True] * (ids.shape[1] - len(words)) for words in token_words],
                               device=device)
        embed = model.get_input_embeddings()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                x = embed(ids).float()
                x0 = torch.where(special.unsqueeze(-1), x, embed(torch.full_like(ids, clf.pad_id)).float())
            n_seq = len(sequences)
            total = torch.zeros_like(x)
            per_call = max(1, 64 // n_seq)  # interpolation points per forward pass

            def prob(points: torch.Tensor) -> torch.Tensor:  # (a, n_seq, L, H) -> (a,) the label's probability
                a = points.shape[0]
                masks = mask.repeat(a, 1)
                logits = model(inputs_embeds=points.reshape(a * n_seq, *x.shape[1:]), attention_mask=masks,
                               **embeds_forward_inputs(model, masks)).logits.float()
                owner = torch.arange(a, device=device).repeat_interleave(n_seq)  # window -> interpolation point
                pooled = pool_logits_torch(logits, owner, a, clf.pool) if n_seq > 1 else logits
                pooled = pooled / clf.temperature
                out = clf.task.probabilities_torch(pooled)
                return out[:, k]

            alphas = (torch.arange(steps, dtype=torch.float32, device=device) + 0.5) / steps
            for chunk in alphas.split(per_call):
                points = (x0 + chunk.view(-1, 1, 1, 1) * (x - x0)).requires_grad_(True)
                grad, = torch.autograd.grad(prob(points).sum(), points)
                total += grad.sum(dim=0)
            with torch.no_grad():
                token_scores = ((x - x0) * total / steps).sum(dim=-1)  # (n_seq, L)
                ends = prob(torch.stack([x, x0]))
        finally:
            model.train(was_training)
        scores = np.zeros(n_words)
        values = token_scores.cpu().numpy()
        for s, words in enumerate(token_words):
            for t, w in enumerate(words):
                if w >= 0:
                    scores[w] += values[s, t]
        delta = abs(float(values[~special.cpu().numpy()].sum()) - float(ends[0] - ends[1]))
        return scores, delta


def deletion_check(clf: Any, texts: list[str], *, k: int = 5, method: str = "integrated-gradients", seed: int = 0,
                   steps: int = DEFAULT_STEPS) -> dict[str, Any]:
    """Faithfulness: the mean fall of the explained label's probability when the k words with the highest
    scores are taken out, against taking out k words at random (the same texts, seeded)."""
    explainer = Explainer(clf)
    rng = np.random.default_rng(seed)
    top_drops, random_drops = [], []
    for text in texts:
        explanation = explainer.explain(text, method=method, steps=steps)
        seen = [i for i, w in enumerate(explanation.words) if w["seen"]]
        if len(seen) <= k:
            continue
        top = set(sorted(seen, key=lambda i: -explanation.words[i]["score"])[:k])
        random = set(rng.choice(seen, size=k, replace=False).tolist())
        sequences, token_words = explainer._encode(text)
        label = clf.labels.index(explanation.label)
        probs = explainer._probabilities([explainer.without(sequences, token_words, top),
                                          explainer.without(sequences, token_words, random)])
        top_drops.append(explanation.probability - float(probs[0, label]))
        random_drops.append(explanation.probability - float(probs[1, label]))
    return {"method": method, "k": k, "texts": len(top_drops),
            "mean_drop_top_k": float(np.mean(top_drops)) if top_drops else None,
            "mean_drop_random_k": float(np.mean(random_drops)) if random_drops else None,
            "share_top_k_larger": float(np.mean(np.array(top_drops) > np.array(random_drops))) if top_drops else None}


def explanations_html(explanations: list[Explanation]) -> str:
    """One self-contained page: per text, the class probabilities on top, then the text with each word
    shaded by its score (red: raised the explained label's probability, blue: lowered it)."""
    blocks = []
    for n, e in enumerate(explanations, 1):
        scale = max([abs(w["score"]) for w in e.words if w["score"] is not None] or [1.0]) or 1.0
        bars = "".join(
            f'<div class="bar"><span class="name">{html.escape(lab)}</span><span class="track"><span class="fill" '
            f'style="width:{100 * p:.1f}%"></span></span><span class="pct">{100 * p:.1f}%</span></div>'
            for lab, p in sorted(e.probabilities.items(), key=lambda kv: -kv[1]))
        parts, last = [], 0
        for w in e.words:
            parts.append(html.escape(" " if w["start"] > last else ""))
            if w["score"] is None:
                parts.append(f'<span class="unseen" title="not read by the model">{html.escape(w["word"])}</span>')
            else:
                alpha = min(1.0, abs(w["score"]) / scale)
                colour = "220,38,38" if w["score"] > 0 else "37,99,235"
                parts.append(f'<span style="background:rgba({colour},{alpha:.2f})" title="{w["score"]:+.4f}">'
                             f'{html.escape(w["word"])}</span>')
            last = w["end"]
        blocks.append(
            f'<section><h2>Text {n}: {html.escape(e.label)} ({100 * e.probability:.1f}%)</h2>{bars}'
            f'<p class="method">{html.escape(e.method)}; red raised, blue lowered the probability of '
            f'{html.escape(e.label)}</p><p class="text">{"".join(parts)}</p></section>')
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
             ".bar{display:flex;align-items:center;gap:.5rem;margin:.1rem 0}.name{width:14rem;overflow:hidden}"
             ".track{flex:1;background:#eee;height:.8rem}.fill{display:block;background:#4b5563;height:100%}"
             ".pct{width:4rem;text-align:right}.text{line-height:1.9}.text span{padding:.1rem .15rem;border-radius:.2rem}"
             ".unseen{color:#999}.method{color:#555;font-size:.9rem}")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>medclf explanations</title><style>{style}</style></head><body>\n<h1>medclf explanations</h1>\n"
            + "\n".join(blocks) + "\n</body></html>\n")
