"""Packing: several whole sentence pairs in one row of max_seq_length tokens.

Shape legend: N pairs, b batch rows, K max_pairs_per_row, L max_seq_length,
P max_predictions_per_seq (per pair), M predictions per row (`predictions_per_row`).

At prepare time `pack` puts a shard's pairs into rows (the packer, below); in the
pipeline a batch's pairs are masked as a flat batch of pairs, each with the random numbers
of its slot (`slots`: row r's pair i is slot r*K + i of b*K), and `rows` builds the packed
batch from them:
  input_ids, token_type_ids, attention_mask, position_ids, pair_ids [b,L] int32,
  cls_positions, next_sentence_label [b,K] int32, pair_weights [b,K] float32,
  masked_positions, masked_ids [b,M] int32, masked_weights [b,M] float32
(a row is its pairs back to back, [CLS] A [SEP] B [SEP] each, then padding; positions
restart at each [CLS]; pair_ids is i + 1 on pair i, 0 on padding; the row's predictions
come first, by position, then unused slots of weight 0). Every pair keeps its own
predictions, min(P, max(1, round(masked_lm_prob * candidates))) of them, and a row's never
exceed M = min(K*P, ceil(masked_lm_prob * L) + K), so M slots lose none: the MLM head
computes M positions a row, not K*P (3 x 20 = 60 at 128 tokens, where M is 23).

The packer (`pack`, per shard of pairs of lengths len_a + len_b + 3): the longest pair
left opens a row; while two or more of its slots are free, the one or two pairs left
that fill it most join it (ties: two pairs, then the shorter first); a last free slot
takes the longest pair left that fits. So each long pair gets the best one or two of the
rest, and short pairs are kept for the rows that need them (best-fit decreasing fills
rows with two middle-sized pairs and leaves three short ones to a row: 92.5% real tokens
where this gives 98.6%, benchmarks/make_corpora.py's short documents at 512). It works on
the histogram of lengths and makes equal rows at once, so its work grows with the number
of distinct rows, not with N. Which pair of a length goes to which row of that
length, and the rows' order, are drawn from the given generator; a row's pairs are longest
first.
"""

from __future__ import annotations

import math

import numpy as np

from flax_bert.data.examples import NUM_SPECIAL_IN_PAIR

Group = tuple[int, tuple[int, ...]]  # (rows, the lengths of each row's pairs)


def pack(lengths: np.ndarray, max_tokens: int, max_pairs: int,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(order [N], row_sizes [R]): the pair indices row after row, and each row's number of
    pairs; every pair once, at most max_pairs pairs and max_tokens tokens in a row."""
    lengths = np.asarray(lengths, np.int64)  # [N]
    if not len(lengths):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    groups = _fill_rows(np.bincount(lengths, minlength=max_tokens + 1), max_tokens, max_pairs)
    sizes = np.repeat([len(s) for _, s in groups], [c for c, _ in groups])  # [R]
    slot_lengths = np.concatenate([np.tile(s, c) for c, s in groups])  # [N] row-major
    # Pairs of each length in a random order fill the slots of that length in row order.
    shuffled = rng.permutation(len(lengths))  # [N]
    by_length = shuffled[np.argsort(lengths[shuffled], kind="stable")]  # [N]
    order = np.empty(len(lengths), np.int64)
    order[np.argsort(slot_lengths, kind="stable")] = by_length
    # Rows in a random order.
    perm = rng.permutation(len(sizes))  # [R]
    starts = np.cumsum(sizes) - sizes  # [R]
    new_sizes = sizes[perm]  # [R]
    first = np.cumsum(new_sizes) - new_sizes  # [R] first slot of each row once reordered
    within = np.arange(len(order)) - np.repeat(first, new_sizes)  # [N]
    return order[np.repeat(starts[perm], new_sizes) + within], new_sizes


def _fill_rows(histogram: np.ndarray, max_tokens: int, max_pairs: int) -> list[Group]:
    """The rows (in groups) for histogram[l] pairs of length l (see the module docstring).
    Equal rows are made at once, as many as the counts allow: a row's choice depends only
    on which lengths are left, and it uses no length up before its last repeat."""
    counts = histogram.astype(np.int64)  # [L+1] a copy, used up row by row
    lengths = np.arange(max_tokens + 1)  # [L+1]
    groups: list[Group] = []
    while counts.any():
        row = [int(np.flatnonzero(counts)[-1])]
        counts[row[0]] -= 1
        while len(row) < max_pairs:
            room = max_tokens - sum(row)
            longest = np.maximum.accumulate(np.where(counts > 0, lengths, 0))[: room + 1]
            taken = (_best_two(counts, longest) if max_pairs - len(row) >= 2
                     else [int(longest[room])] if longest[room] else [])
            if not taken:
                break
            np.subtract.at(counts, taken, 1)
            row += taken
        need = np.bincount(row, minlength=max_tokens + 1)  # [L+1] the row's pairs
        counts += need  # the row undone, then made as many times as the counts allow
        used = np.flatnonzero(need)
        times = int(np.min(counts[used] // need[used]))
        counts -= times * need
        groups.append((times, tuple(row)))
    return groups


def _best_two(counts: np.ndarray, longest: np.ndarray) -> list[int]:
    """The one or two lengths left (counts [L+1]) that fill room = len(longest) - 1 tokens
    most; ties: two, then the shorter first. longest [room+1]: the longest left <= x."""
    room = len(longest) - 1
    first = np.flatnonzero(counts[: room + 1])  # [F] lengths that fit
    if not len(first):
        return []
    limit = np.minimum(first, room - first)  # [F] the second: no longer than the first
    second = longest[limit]  # [F] 0: none fits
    one_left = (second == first) & (counts[first] < 2)  # a length twice needs two pairs
    second = np.where(one_left, longest[np.minimum(first - 1, limit)], second)  # [F]
    best = int(np.argmax(2 * (first + second) + (second > 0)))
    return [int(first[best])] + ([int(second[best])] if second[best] else [])


def slots(pairs_per_row: np.ndarray, max_pairs: int) -> np.ndarray:
    """[n] the slot r*K + i of each pair of a batch (row r's pair i; rows' pairs in order)
    from the rows' numbers of pairs [b]."""
    first = np.cumsum(pairs_per_row) - pairs_per_row  # [b] first pair of each row
    row = np.repeat(np.arange(len(pairs_per_row)), pairs_per_row)  # [n]
    return row * max_pairs + np.arange(len(row)) - first[row]


def predictions_per_row(masked_lm_prob: float, seq: int, max_pairs: int,
                        max_predictions: int) -> int:
    """M: the prediction slots of a packed row. Pair i predicts at most
    masked_lm_prob * n_i + 1 of its n_i <= L - 3 candidates, so a row's pairs at most
    masked_lm_prob * L + K in all."""
    return min(max_pairs * max_predictions, math.ceil(masked_lm_prob * seq) + max_pairs)


def rows(masked: dict[str, np.ndarray], len_a: np.ndarray, len_b: np.ndarray,
         next_sentence_label: np.ndarray, slot: np.ndarray, b: int, max_pairs: int,
         predictions: int, pad_id: int) -> dict[str, np.ndarray]:
    """The packed batch of b rows (module docstring) with `predictions` (M) slots a row,
    from its n pairs in their slots [n]: masked input_ids [n,L], masked_positions,
    masked_ids, masked_weights [n,P] (positions in the pair), len_a, len_b,
    next_sentence_label [n]."""
    k, seq = max_pairs, masked["input_ids"].shape[1]

    def in_slots(values: np.ndarray) -> np.ndarray:  # [n, ...] -> [b*K, ...], 0 if empty
        out = np.zeros((b * k,) + values.shape[1:], values.dtype)
        out[slot] = values
        return out

    real = in_slots(np.ones(len(slot), bool))  # [b*K]
    total = in_slots(len_a + len_b + NUM_SPECIAL_IN_PAIR)  # [b*K] tokens of a pair
    ends = np.cumsum(total.reshape(b, k), axis=1)  # [b, K]
    start = ends.ravel() - total  # [b*K] row position of each pair's [CLS]
    pos = np.arange(seq)  # [L]
    # The row's tokens: each pair's first `total` positions, placed from its `start` on.
    inside = pos[None, :] < total[slot, None]  # [n, L]
    at = ((slot // k) * seq + start[slot])[:, None] + pos  # [n, L] flat row index
    input_ids = np.full(b * seq, pad_id, np.int32)  # [b*L]
    input_ids[at[inside]] = masked["input_ids"][inside]
    # Per row position: its pair (i + 1; 0 on padding), the position in it, its segment.
    pair = (pos[None, None, :] >= ends[:, :, None]).sum(axis=1)  # [b, L] in 0..K
    on_pair = pos[None, :] < ends[:, -1:]  # [b, L]
    pair = np.minimum(pair, k - 1)  # [b, L] (padding: the last pair, masked out below)
    position = pos[None, :] - np.take_along_axis(start.reshape(b, k), pair, axis=1)  # [b, L]
    in_b = position >= np.take_along_axis(in_slots(len_a).reshape(b, k), pair, axis=1) + 2
    weights = in_slots(masked["masked_weights"]).reshape(b, -1)  # [b, K*P]
    positions = (in_slots(masked["masked_positions"]) + start[:, None]).reshape(b, -1)
    ids = in_slots(masked["masked_ids"]).reshape(b, -1)  # [b, K*P]
    # The row's predictions first (slots and, within a pair, positions are in row order).
    first = np.argsort(weights <= 0, axis=1, kind="stable")[:, :predictions]  # [b, M]
    if np.any(np.take_along_axis(weights, first, 1).sum(1) < weights.sum(1)):
        raise AssertionError("a packed row has more predictions than its slots")
    weights = np.take_along_axis(weights, first, 1)  # [b, M]
    return dict(
        input_ids=input_ids.reshape(b, seq),
        token_type_ids=(on_pair & in_b).astype(np.int32),
        attention_mask=on_pair.astype(np.int32),
        position_ids=np.where(on_pair, position, 0).astype(np.int32),
        pair_ids=np.where(on_pair, pair + 1, 0).astype(np.int32),
        cls_positions=np.where(real, start, 0).reshape(b, k).astype(np.int32),
        next_sentence_label=in_slots(next_sentence_label).reshape(b, k).astype(np.int32),
        pair_weights=real.reshape(b, k).astype(np.float32),
        masked_positions=np.where(weights > 0, np.take_along_axis(positions, first, 1),
                                  0).astype(np.int32),
        masked_ids=np.take_along_axis(ids, first, 1).astype(np.int32),
        masked_weights=weights.astype(np.float32),
    )
