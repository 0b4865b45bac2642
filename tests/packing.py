"""Packed batches for the tests, built from unpacked examples as the data pipeline packs
them: several whole sentence pairs back to back in a row, positions restarting at each
pair's [CLS], pair i's tokens marked i + 1 in pair_ids, its predictions in slots
[i*P, (i+1)*P) (the batch format of packed rows: flax_bert/model.py, losses.py)."""

from __future__ import annotations

from typing import Iterator

import numpy as np


def examples(rng: np.random.Generator, num: int, seq_len: int, preds: int, vocab_size: int,
             min_len: int, max_len: int) -> dict[str, np.ndarray]:
    """An unpacked batch of `num` pairs of min_len..max_len tokens, right-padded to
    seq_len: segment A on the first half, B on the rest; `preds` prediction slots, the
    last unused (weight 0, position 0) in every third example."""
    lengths = rng.integers(min_len, max_len + 1, num)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, vocab_size, (num, seq_len)).astype(np.int32) * mask
    types = ((np.arange(seq_len)[None, :] >= lengths[:, None] // 2) & (mask == 1))
    positions = np.stack([rng.choice(np.arange(1, n), preds, replace=False) for n in lengths])
    weights = np.ones((num, preds), np.float32)
    weights[::3, -1] = 0.0
    return {
        "input_ids": ids, "token_type_ids": types.astype(np.int32), "attention_mask": mask,
        "masked_positions": (positions * (weights > 0)).astype(np.int32),
        "masked_ids": rng.integers(5, vocab_size, (num, preds)).astype(np.int32),
        "masked_weights": weights,
        "next_sentence_label": rng.integers(0, 2, num).astype(np.int32),
    }


def slots(unpacked: dict[str, np.ndarray], rows: list[list[int]]
          ) -> Iterator[tuple[int, int, int, int, int]]:
    """(row, slot i, example, offset, length) of each pair placed by `rows` (the example
    indices of each packed row, in order)."""
    lengths = unpacked["attention_mask"].sum(axis=1)
    for row, members in enumerate(rows):
        offset = 0
        for i, example in enumerate(members):
            yield row, i, example, offset, int(lengths[example])
            offset += int(lengths[example])


def pack(unpacked: dict[str, np.ndarray], rows: list[list[int]], seq_len: int,
         max_pairs: int) -> dict[str, np.ndarray]:
    """The packed batch of len(rows) rows of seq_len tokens, at most max_pairs pairs a row."""
    preds = unpacked["masked_positions"].shape[1]
    num_rows = len(rows)
    out = {k: np.zeros((num_rows, seq_len), np.int32) for k in (
        "input_ids", "token_type_ids", "attention_mask", "position_ids", "pair_ids")}
    out.update(cls_positions=np.zeros((num_rows, max_pairs), np.int32),
               next_sentence_label=np.zeros((num_rows, max_pairs), np.int32),
               pair_weights=np.zeros((num_rows, max_pairs), np.float32),
               masked_positions=np.zeros((num_rows, max_pairs * preds), np.int32),
               masked_ids=np.zeros((num_rows, max_pairs * preds), np.int32),
               masked_weights=np.zeros((num_rows, max_pairs * preds), np.float32))
    for row, i, example, offset, length in slots(unpacked, rows):
        assert i < max_pairs and offset + length <= seq_len, (row, i, offset + length)
        tokens, predictions = slice(offset, offset + length), slice(i * preds, (i + 1) * preds)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            out[key][row, tokens] = unpacked[key][example, :length]
        out["position_ids"][row, tokens] = np.arange(length)
        out["pair_ids"][row, tokens] = i + 1
        out["cls_positions"][row, i] = offset
        out["next_sentence_label"][row, i] = unpacked["next_sentence_label"][example]
        out["pair_weights"][row, i] = 1.0
        used = unpacked["masked_weights"][example] > 0
        out["masked_positions"][row, predictions] = np.where(
            used, unpacked["masked_positions"][example] + offset, 0)
        out["masked_ids"][row, predictions] = unpacked["masked_ids"][example]
        out["masked_weights"][row, predictions] = unpacked["masked_weights"][example]
    return out
