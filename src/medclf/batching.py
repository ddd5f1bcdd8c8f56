"""Tokenize once, pad per batch, group batches by length.

Padding every text to max_length (the tutorial's 512) wastes most of the
compute on pad tokens; here each batch is padded to its own longest text, and
texts of similar length are batched together so that longest is close to the
rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Encoded:
    """Token ids per text (no padding), and how much truncation cost."""

    input_ids: list[list[int]]
    n_truncated: int
    tokens_total: int
    tokens_lost: int

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def encode(
    tokenizer: Any, texts: list[str], *, max_length: int, long_text: str = "truncate", chunk: int = 2048
) -> Encoded:
    """Tokenize texts (in chunks, with the fast tokenizer's batch path) to at most max_length tokens.

    long_text='truncate' keeps the first tokens; 'head-tail' keeps the first quarter and the last
    three quarters of the token budget (Sun et al. 2019, "How to Fine-Tune BERT for Text
    Classification?": head+tail beat head-only and tail-only on long documents). The special tokens
    that open and close the sequence are always kept.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids: list[list[int]] = []
    n_truncated = tokens_total = tokens_lost = 0
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        full = tokenizer(part, add_special_tokens=True, truncation=False, return_attention_mask=False,
                         return_token_type_ids=False, verbose=False)["input_ids"]
        for seq in full:
            tokens_total += len(seq)
            if len(seq) > max_length:
                n_truncated += 1
                tokens_lost += len(seq) - max_length
                seq = _shorten(seq, max_length, special, long_text)
            ids.append(seq)
    return Encoded(ids, n_truncated, tokens_total, tokens_lost)


def _shorten(seq: list[int], max_length: int, special: set[int], long_text: str) -> list[int]:
    lead = 0
    while lead < len(seq) and seq[lead] in special:
        lead += 1
    trail = 0
    while trail < len(seq) - lead and seq[len(seq) - 1 - trail] in special:
        trail += 1
    body = seq[lead : len(seq) - trail]
    budget = max_length - lead - trail
    if long_text == "head-tail":
        head = budget // 4
        kept = body[:head] + body[len(body) - (budget - head) :]
    else:
        kept = body[:budget]
    return seq[:lead] + kept + seq[len(seq) - trail :]


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


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Deterministic inference batches: indices sorted by length, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of this batch."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
