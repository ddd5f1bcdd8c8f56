"""Tokenize once, pad per batch, group batches by length.

Padding every text to max_length (the tutorial's 512) wastes most of the
compute on pad tokens; here each batch is padded to its own longest text, and
texts of similar length are batched together so that longest is close to the
rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Encoded:
    """Token ids of the sequences to run (no padding), and how much cutting cost.

    With long_text='chunk' a long text becomes several windows: `input_ids` holds every window and
    `doc_of[i]` the index of the text window i belongs to (windows of a text are consecutive).
    Otherwise `doc_of` is None and there is one sequence per text."""

    input_ids: list[list[int]]
    n_truncated: int
    tokens_total: int
    tokens_lost: int
    doc_of: list[int] | None = None
    n_docs: int = -1
    char_spans: list[tuple[int, int]] | None = None
    """chunk: each window's (start, end) character offsets in its text, to point at it without copying text."""
    text_tokens: list[int] | None = None
    """Tokens of each whole text (special tokens included), before any cut: the length distribution."""
    token_offsets: list[list[tuple[int, int]]] | None = None
    """With encode(..., token_offsets=True): each sequence's tokens' (start, end) characters in its text
    ((0, 0) for special tokens), so that scores per token can be put back on the words they came from."""

    def __post_init__(self) -> None:
        if self.n_docs < 0:
            self.n_docs = len(self.input_ids) if self.doc_of is None else (max(self.doc_of) + 1 if self.doc_of else 0)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    @classmethod
    def concat(cls, parts: list[Encoded]) -> Encoded:
        """The encoding of consecutive slices of texts, as one (text indices in `doc_of` shifted to the whole)."""
        docs = [0]
        for part in parts:
            docs.append(docs[-1] + part.n_docs)

        def joined(name: str) -> list[Any] | None:
            values = [getattr(part, name) for part in parts]
            return None if any(v is None for v in values) else [x for v in values for x in v]

        doc_of = None
        if all(part.doc_of is not None for part in parts):
            doc_of = [d + docs[i] for i, part in enumerate(parts) for d in part.doc_of or []]
        return cls([ids for part in parts for ids in part.input_ids], sum(p.n_truncated for p in parts),
                   sum(p.tokens_total for p in parts), sum(p.tokens_lost for p in parts), doc_of=doc_of,
                   n_docs=docs[-1], char_spans=joined("char_spans"), text_tokens=joined("text_tokens"),
                   token_offsets=joined("token_offsets"))

    def windows_of(self, docs: list[int]) -> list[int]:
        """Indices into input_ids of the windows of these texts, in order."""
        if self.doc_of is None:
            return list(docs)
        return [w for d in docs for w in self._windows[d]]

    @property
    def doc_lengths(self) -> list[int]:
        """Tokens per text over all its windows (for grouping texts of similar cost)."""
        if self.doc_of is None:
            return self.lengths
        return [sum(len(self.input_ids[w]) for w in ws) for ws in self._windows]

    @cached_property
    def _windows(self) -> list[list[int]]:
        windows: list[list[int]] = [[] for _ in range(self.n_docs)]
        for w, d in enumerate(self.doc_of or []):
            windows[d].append(w)
        return windows


def unpaired_surrogate(text: str) -> int | None:
    """Where `text` holds an unpaired UTF-16 surrogate (U+D800-U+DFFF, e.g. from JSON's "\\ud800" or undecodable
    command-line bytes): not valid Unicode, and the tokenizer cannot take it. None for a valid text."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def default_stride(max_length: int) -> int:
    """Overlap between windows when --stride is not given: a quarter of the window's text budget."""
    return max(0, (max_length - 2) // 4)


def window_starts(n_body: int, budget: int, stride: int, max_chunks: int) -> list[int]:
    """Where each window starts in a text's body tokens (specials excluded).

    Windows hold `budget` tokens and advance by budget - stride; the last one ends at the last token.
    More than max_chunks windows: max_chunks of them, spread evenly from the first to the last, so
    the whole text is still sampled (evidence can sit anywhere)."""
    if budget < 1:
        raise ValueError("budget must be at least 1")
    if not 0 <= stride < budget:
        raise ValueError("stride must be at least 0 and smaller than the budget")
    if n_body <= budget:
        return [0]
    step = budget - stride
    starts = list(range(0, n_body - budget + 1, step))
    if starts[-1] + budget < n_body:
        starts.append(n_body - budget)
    if len(starts) > max_chunks:
        if max_chunks == 1:
            return [starts[0]]
        last = len(starts) - 1
        starts = [starts[round(i * last / (max_chunks - 1))] for i in range(max_chunks)]
    return starts


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], *, max_length: int, long_text: str = "truncate", stride: int | None = None,
    max_chunks: int = 8, tokenize_chunk: int = 2048, token_offsets: bool = False,
) -> Encoded:
    """Tokenize texts (in chunks, with the fast tokenizer's batch path) into sequences of at most max_length.

    long_text='truncate' keeps the first tokens; 'head-tail' keeps the first quarter and the last
    three quarters of the token budget (Sun et al. 2019, "How to Fine-Tune BERT for Text
    Classification?": head+tail beat head-only and tail-only on long documents); 'chunk' cuts a long
    text into overlapping windows (window_starts), each with the opening and closing special tokens.
    The special tokens that open and close the sequence are always kept. token_offsets: also record
    where in its text each kept token came from (Encoded.token_offsets).
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids: list[list[int]] = []
    doc_of: list[int] | None = [] if long_text == "chunk" else None
    spans: list[tuple[int, int]] | None = [] if long_text == "chunk" else None
    stride = default_stride(max_length) if stride is None else stride
    n_truncated = tokens_total = tokens_lost = 0
    text_tokens: list[int] = []
    offsets_out: list[list[tuple[int, int]]] | None = [] if token_offsets else None
    for start in range(0, len(texts), tokenize_chunk):
        part = texts[start : start + tokenize_chunk]
        tokenized = tokenizer(part, add_special_tokens=True, truncation=False, return_attention_mask=False,
                              return_token_type_ids=False, verbose=False,
                              return_offsets_mapping=spans is not None or token_offsets)
        full = tokenized["input_ids"]
        for offset, seq in enumerate(full):
            tokens_total += len(seq)
            text_tokens.append(len(seq))

            def keep(positions: list[int]) -> None:  # one sequence made of these positions of the text's tokens
                ids.append([seq[p] for p in positions])
                if offsets_out is not None:
                    mapping = tokenized["offset_mapping"][offset]
                    offsets_out.append([(0, 0) if seq[p] in special else (int(mapping[p][0]), int(mapping[p][1]))
                                        for p in positions])

            if len(seq) <= max_length:
                keep(list(range(len(seq))))
                if doc_of is not None and spans is not None:
                    doc_of.append(start + offset)
                    spans.append((0, len(part[offset])))
                continue
            if doc_of is None:
                n_truncated += 1
                tokens_lost += len(seq) - max_length
                keep(_kept_positions(seq, max_length, special, long_text))
                continue
            lead, body, trail = _split_specials(seq, special)
            budget = max_length - len(lead) - len(trail)
            starts = window_starts(len(body), budget, min(stride, budget - 1), max_chunks)
            covered = _covered(starts, budget, len(body))
            if covered < len(body):
                n_truncated += 1
                tokens_lost += len(body) - covered
            chars = tokenized["offset_mapping"][offset][len(lead) : len(seq) - len(trail)] if spans is not None else None
            for s0 in starts:
                keep([*range(len(lead)), *range(len(lead) + s0, len(lead) + min(len(body), s0 + budget)),
                      *range(len(seq) - len(trail), len(seq))])
                doc_of.append(start + offset)
                if spans is not None and chars is not None:
                    spans.append((int(chars[s0][0]), int(chars[min(len(body), s0 + budget) - 1][1])))
    return Encoded(ids, n_truncated, tokens_total, tokens_lost, doc_of=doc_of, n_docs=len(texts), char_spans=spans,
                   text_tokens=text_tokens, token_offsets=offsets_out)


def _covered(starts: list[int], budget: int, n_body: int) -> int:
    covered, reach = 0, 0
    for s0 in starts:
        end = min(n_body, s0 + budget)
        covered += max(0, end - max(s0, reach))
        reach = max(reach, end)
    return covered


def _split_specials(seq: list[int], special: set[int]) -> tuple[list[int], list[int], list[int]]:
    lead = 0
    while lead < len(seq) and seq[lead] in special:
        lead += 1
    trail = 0
    while trail < len(seq) - lead and seq[len(seq) - 1 - trail] in special:
        trail += 1
    return seq[:lead], seq[lead : len(seq) - trail], seq[len(seq) - trail :]


def _kept_positions(seq: list[int], max_length: int, special: set[int], long_text: str) -> list[int]:
    """Which positions of a too-long sequence are kept: the specials, and the first tokens ('truncate') or the
    first quarter and the last three quarters of the budget ('head-tail')."""
    lead, body, trail = _split_specials(seq, special)
    budget = max_length - len(lead) - len(trail)
    first = len(lead)
    if long_text == "head-tail":
        head = budget // 4
        kept = [*range(first, first + head), *range(first + len(body) - (budget - head), first + len(body))]
    else:
        kept = list(range(first, first + budget))
    return [*range(len(lead)), *kept, *range(len(seq) - len(trail), len(seq))]


def pool_logits(logits: np.ndarray, doc_of: list[int] | None, n_docs: int, mode: str = "mean") -> np.ndarray:
    """One row per text from one row per window: the mean or the max of its windows' rows."""
    if doc_of is None:
        return logits
    index = np.asarray(doc_of)
    if mode == "max":
        out = np.full((n_docs, logits.shape[1]), -np.inf, dtype=logits.dtype)
        np.maximum.at(out, index, logits)
        return out
    out = np.zeros((n_docs, logits.shape[1]), dtype=logits.dtype)
    np.add.at(out, index, logits)
    return out / np.bincount(index, minlength=n_docs)[:, None].clip(min=1)


def pool_logits_torch(logits: torch.Tensor, index: torch.Tensor, n_docs: int, mode: str = "mean") -> torch.Tensor:
    """pool_logits for a training batch, differentiable: `index[i]` is window i's text within the batch."""
    expanded = index.unsqueeze(1).expand_as(logits)
    if mode == "max":
        out = torch.full((n_docs, logits.shape[1]), float("-inf"), dtype=logits.dtype, device=logits.device)
        return out.scatter_reduce(0, expanded, logits, reduce="amax", include_self=False)
    out = torch.zeros((n_docs, logits.shape[1]), dtype=logits.dtype, device=logits.device)
    return out.scatter_reduce(0, expanded, logits, reduce="mean", include_self=False)


def length_grouped_batches(
    lengths: list[int], batch_size: int, generator: torch.Generator, *, mega: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar-length items (as HF's LengthGroupedSampler).

    Shuffle all indices, cut them into mega-batches of `mega` batches, sort each
    mega-batch by length (longest first), cut into batches, then shuffle the
    batch order so that long and short batches are mixed across the epoch.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    size = batch_size * mega
    batches: list[list[int]] = []
    for start in range(0, len(order), size):
        group = sorted(order[start : start + size], key=lambda i: -lengths[i])
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def sorted_batches(lengths: list[int], batch_size: int, *, max_tokens: int | None = None,
                   pad_multiple: int = 1) -> list[list[int]]:
    """Deterministic inference batches: indices sorted by length, longest first, at most `batch_size` per batch and,
    with `max_tokens`, at most that many padded tokens (sequences x the batch's padded length) per batch: batches of
    short texts then hold more of them."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if max_tokens is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    i = 0
    while i < len(order):
        width = padded_width(lengths[order[i]], pad_multiple)  # the batch's longest comes first
        take = max(1, min(batch_size, max_tokens // max(1, width)))
        batches.append(order[i : i + take])
        i += take
    return batches


@dataclass(frozen=True)
class Batching:
    """How sequences are grouped into padded batches for forward passes without gradients (evaluation, inference):
    `modeling.batching_for` picks one per device."""

    batch_size: int
    """Most sequences in one batch."""
    max_tokens: int | None = None
    """Most padded tokens (sequences x padded length) in one batch; None: no bound."""
    pad_multiple: int = 1

    def batches(self, lengths: list[int]) -> list[list[int]]:
        return sorted_batches(lengths, self.batch_size, max_tokens=self.max_tokens, pad_multiple=self.pad_multiple)

    def collate(self, sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(sequences, pad_id, pad_multiple=self.pad_multiple)


def padded_width(longest: int, multiple: int = 1) -> int:
    """The padded length of a batch whose longest sequence has `longest` tokens."""
    return -(-longest // multiple) * multiple


def collate(sequences: list[list[int]], pad_id: int, *, pad_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of this batch (rounded up to a multiple of `pad_multiple`: on a GPU, fewer distinct
    shapes to choose kernels for, and tensor-core friendly ones)."""
    width = padded_width(max(len(s) for s in sequences), pad_multiple)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
