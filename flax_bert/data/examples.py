"""Pretraining examples, after google-research/bert `create_pretraining_data.py` (pure NumPy).

Shape legend: N examples, B batch, L max_seq_length, P max_predictions_per_seq.

`create_pairs` packs each document's sentences into segment pairs `[CLS] A [SEP] B [SEP]`
(B is the real continuation, or with probability 1/2 a segment of another document) and
stores them unmasked; `mask_batch` picks and replaces the MLM positions for a whole batch
at once (it runs in the input pipeline for dynamic masking).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from flax_bert.data.vocab import SpecialIds

NUM_SPECIAL_IN_PAIR = 3  # [CLS], [SEP], [SEP]
NEXT_PROB = 0.5  # Probability that B is the real next segment.
RANDOM_DOC_TRIES = 10  # Draws to find a document other than A's (as in BERT).
IS_NEXT, NOT_NEXT = 0, 1  # next_sentence_label values (HF / google convention).


def _truncate_lengths(la: int, lb: int, max_tokens: int) -> tuple[int, int]:
    """Lengths after BERT's truncate_seq_pair (trim the longer; on a tie trim B)."""
    excess = la + lb - max_tokens
    if excess <= 0:
        return la, lb
    first = min(excess, abs(la - lb))
    la, lb = (la - first, lb) if la > lb else (la, lb - first)
    rest = excess - first
    return la - rest // 2, lb - (rest - rest // 2)


def _trim(seg: np.ndarray, new_len: int, rng: np.random.Generator) -> np.ndarray:
    """Drop len(seg)-new_len tokens, each from the front or back with probability 1/2."""
    cut = len(seg) - new_len
    front = int(rng.binomial(cut, 0.5)) if cut > 0 else 0
    return seg[front : front + new_len]


def create_pairs(
    tokens: np.ndarray,  # [T] all token ids, sentence after sentence
    sent_offsets: np.ndarray,  # [S+1] start of each sentence in tokens
    doc_offsets: np.ndarray,  # [D+1] first sentence of each document
    *,
    max_seq_length: int,
    short_seq_prob: float,
    dupe_factor: int,
    special: SpecialIds,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Unmasked NSP pairs: input_ids [N,L] int32, len_a/len_b [N], next_sentence_label [N],
    doc_a/doc_b [N] (document index of each segment). With a single document no random B
    can be drawn: its pairs are all continuations (a one-sentence chunk gives none)."""
    num_docs = len(doc_offsets) - 1
    max_tokens = max_seq_length - NUM_SPECIAL_IN_PAIR
    rows: list[tuple[np.ndarray, np.ndarray, int, int, int]] = []
    sent_offsets, doc_offsets = np.asarray(sent_offsets).tolist(), np.asarray(doc_offsets).tolist()
    for _ in range(dupe_factor):
        for d in range(num_docs):
            rows.extend(
                _document_pairs(
                    tokens, sent_offsets, doc_offsets, d, num_docs, max_tokens,
                    short_seq_prob, rng,
                )
            )
    n = len(rows)
    len_a = np.fromiter((len(r[0]) for r in rows), np.int32, n)  # [N]
    len_b = np.fromiter((len(r[1]) for r in rows), np.int32, n)  # [N]
    label, doc_a, doc_b = (np.fromiter((r[j] for r in rows), np.int32, n) for j in (2, 3, 4))
    input_ids = np.full((n, max_seq_length), special.pad, np.int32)  # [N, L]
    pos = np.arange(max_seq_length)[None, :]  # [1, L]
    la = len_a[:, None]  # [N, 1]
    in_a = (pos >= 1) & (pos <= la)  # [N, L]
    in_b = (pos >= la + 2) & (pos < la + 2 + len_b[:, None])  # [N, L]
    if n:  # row-major: A then B of each row
        input_ids[in_a | in_b] = np.concatenate([seg for r in rows for seg in r[:2]])
    input_ids[:, 0] = special.cls
    input_ids[np.arange(n), 1 + len_a] = special.sep
    input_ids[np.arange(n), 2 + len_a + len_b] = special.sep
    return dict(
        input_ids=input_ids, len_a=len_a, len_b=len_b, next_sentence_label=label,
        doc_a=doc_a, doc_b=doc_b,
    )


def _document_pairs(
    tokens, sent_offsets, doc_offsets, d, num_docs, max_tokens, short_seq_prob, rng
) -> Iterator[tuple[np.ndarray, np.ndarray, int, int, int]]:
    """BERT's create_instances_from_document for document d. Sentences of a chunk are
    consecutive, so a segment is one slice of tokens (sent_offsets a list: fast scalars)."""
    first, last = doc_offsets[d], doc_offsets[d + 1]
    span = lambda s, e: tokens[sent_offsets[s] : sent_offsets[e]]  # noqa: E731  sentences [s, e)
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_tokens + 1))
    chunk: list[int] = []  # sentence indices
    length = 0
    s = first
    while s < last:
        chunk.append(s)
        length += sent_offsets[s + 1] - sent_offsets[s]
        if s == last - 1 or length >= target:
            if chunk:
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = span(chunk[0], chunk[0] + a_end)
                random_next = len(chunk) == 1 or rng.random() >= NEXT_PROB
                if random_next and num_docs > 1:
                    is_random, target_b = NOT_NEXT, max(1, target - len(a))
                    other = d
                    for _ in range(RANDOM_DOC_TRIES):
                        other = int(rng.integers(0, num_docs))
                        if other != d:
                            break
                    if other == d:  # no luck: take the next document
                        other = (d + 1) % num_docs
                    o_first, o_last = doc_offsets[other], doc_offsets[other + 1]
                    start = int(rng.integers(o_first, o_last))
                    end = start + 1  # sentences [start, end) reach target_b or o_last
                    while end < o_last and sent_offsets[end] - sent_offsets[start] < target_b:
                        end += 1
                    b = span(start, end)
                    s -= len(chunk) - a_end  # put the unused sentences back
                    db = other
                elif len(chunk) > 1:
                    is_random, db = IS_NEXT, d
                    b = span(chunk[0] + a_end, chunk[-1] + 1)
                else:  # one sentence and no other document to draw B from: no pair
                    is_random, db, b = IS_NEXT, d, a[:0]
                la, lb = _truncate_lengths(len(a), len(b), max_tokens)
                a, b = _trim(a, la, rng), _trim(b, lb, rng)
                if len(a) >= 1 and len(b) >= 1:
                    yield a, b, is_random, d, db
            chunk, length = [], 0
            target = max_tokens
            if rng.random() < short_seq_prob:
                target = int(rng.integers(2, max_tokens + 1))
        s += 1


def segment_arrays(
    len_a: np.ndarray, len_b: np.ndarray, max_seq_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """token_type_ids and attention_mask [B,L] int32 from the segment lengths [B]."""
    pos = np.arange(max_seq_length)[None, :]  # [1, L]
    end_a = (len_a + 2)[:, None]  # [B, 1] first position of B
    end = (len_a + len_b + NUM_SPECIAL_IN_PAIR)[:, None]  # [B, 1] first padding position
    token_type_ids = ((pos >= end_a) & (pos < end)).astype(np.int32)  # [B, L]
    attention_mask = (pos < end).astype(np.int32)  # [B, L]
    return token_type_ids, attention_mask


def mask_batch(
    input_ids: np.ndarray,  # [B, L] unmasked
    len_a: np.ndarray,  # [B]
    len_b: np.ndarray,  # [B]
    rng: np.random.Generator,
    *,
    vocab_size: int,
    mask_id: int,
    masked_lm_prob: float,
    max_predictions: int,
    mask_token_prob: float,
    random_token_prob: float,
    continuation: np.ndarray | None = None,  # [vocab] bool: whole-word masking when given
    global_rows: int | None = None,
    rows: np.ndarray | None = None,  # [B] the global rows of the batch's rows
) -> dict[str, np.ndarray]:
    """BERT masking for a batch, vectorized.

    Candidates are the tokens of A and B (never [CLS]/[SEP]/padding). Each row predicts
    min(P, max(1, round(masked_lm_prob * candidates))) positions, chosen uniformly (with
    whole-word masking: whole words in random order, stopping before the first word that
    would overshoot); of those, mask_token_prob become [MASK], random_token_prob a uniform
    random id, the rest stay. Returns input_ids [B,L] int32, masked_positions [B,P] int32,
    masked_ids [B,P] int32, masked_weights [B,P] float32, sorted by position.

    The random numbers are drawn for `global_rows` rows (default B) and rows `rows`
    (default 0..B-1) are used, so each process of a sharded global batch gets exactly the
    masks a single process would give those rows (and a packed batch's pairs the masks of
    their pair slots).
    """
    b, seq = input_ids.shape
    pos = np.arange(seq)[None, :]  # [1, L]
    la, lb = len_a[:, None], len_b[:, None]  # [B, 1]
    cand = ((pos >= 1) & (pos <= la)) | ((pos >= la + 2) & (pos < la + 2 + lb))  # [B, L]
    n_cand = cand.sum(axis=1)  # [B]
    num_pred = np.minimum(
        max_predictions, np.maximum(1, np.rint(n_cand * masked_lm_prob).astype(np.int64))
    )  # [B]
    rows = np.arange(b) if rows is None else rows  # [B]
    shape = (global_rows or b, seq)
    keys = rng.random(shape)[rows]  # [B, L]
    u = rng.random(shape)[rows]  # [B, L]
    random_ids = rng.integers(0, vocab_size, shape, dtype=np.int32)[rows]  # [B, L]
    if continuation is None:
        keys = np.where(cand, keys, 2.0)  # non-candidates sort last
        rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1)  # [B, L]
        chosen = cand & (rank < num_pred[:, None])  # [B, L]
    else:
        chosen = _whole_word_choice(input_ids, cand, keys, num_pred, continuation)
    # Replacement: [MASK] / random id / keep, decided per chosen position.
    masked = np.where(u < mask_token_prob, mask_id, input_ids)
    masked = np.where((u >= mask_token_prob) & (u < mask_token_prob + random_token_prob),
                      random_ids, masked)
    out_ids = np.where(chosen, masked, input_ids).astype(np.int32)  # [B, L]
    # Gather chosen positions in order: chosen ones first (by position), then padding.
    order = np.argsort(np.where(chosen, pos, seq + pos), axis=1, kind="stable")  # [B, L]
    positions = order[:, :max_predictions]  # [B, P]
    if positions.shape[1] < max_predictions:
        positions = np.pad(positions, ((0, 0), (0, max_predictions - positions.shape[1])))
    weights = np.arange(max_predictions)[None, :] < chosen.sum(axis=1)[:, None]  # [B, P]
    positions = np.where(weights, positions, 0).astype(np.int32)  # [B, P]
    masked_ids = np.where(weights, np.take_along_axis(input_ids, positions, 1), 0)  # [B, P]
    return dict(
        input_ids=out_ids,
        masked_positions=positions,
        masked_ids=masked_ids.astype(np.int32),
        masked_weights=weights.astype(np.float32),
    )


def _whole_word_choice(
    input_ids: np.ndarray,  # [B, L]
    cand: np.ndarray,  # [B, L] bool
    keys: np.ndarray,  # [B, L] uniform, one per word slot
    num_pred: np.ndarray,  # [B]
    continuation: np.ndarray,  # [vocab] bool
) -> np.ndarray:
    """[B, L] bool: whole words (a piece plus its `##` pieces) taken in random order until
    the next word would exceed num_pred."""
    b, seq = input_ids.shape
    pos = np.broadcast_to(np.arange(seq)[None, :], (b, seq))  # [B, L]
    prev_cand = np.pad(cand[:, :-1], ((0, 0), (1, 0)))  # [B, L]
    is_cont = continuation[input_ids] & prev_cand  # [B, L] joins the previous piece
    start = cand & ~is_cont  # [B, L] first piece of a word
    word = np.cumsum(start, axis=1) - 1  # [B, L] word index in the row
    word = np.maximum(word, 0)
    word_key = np.take_along_axis(keys, word, axis=1)  # [B, L] one key per word
    word_key = np.where(cand, word_key, 2.0)
    order = np.argsort(word_key, axis=1, kind="stable")  # [B, L] words contiguous
    rank = np.argsort(order, axis=1)  # [B, L] place of each token in that order
    start_pos = np.maximum.accumulate(np.where(start, pos, 0), axis=1)  # [B, L]
    piece = pos - start_pos  # [B, L] index of the piece in its word
    flat = (np.arange(b)[:, None] * seq + word).ravel()
    word_len = np.bincount(flat, weights=cand.ravel(), minlength=b * seq).reshape(b, seq)
    tok_word_len = np.take_along_axis(word_len, word, axis=1)  # [B, L]
    word_end = rank - piece + tok_word_len  # [B, L] tokens taken once this word is in
    return cand & (word_end <= num_pred[:, None])
