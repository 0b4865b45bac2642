"""One pretraining example as one ArrayRecord record, packed compactly.

Shape legend: N examples, b batch, L max_seq_length, P max_predictions_per_seq.

Record bytes (little-endian):
  header  int32 [6]: len_a, len_b, next_sentence_label, doc_a, doc_b, num_masked
  tokens  id dtype [len_a + len_b]: segment A then segment B (no [CLS]/[SEP]/padding)
  static masks (eval, or train prepared with static masking; num_masked = 0 otherwise):
  positions uint16 [num_masked], replacement ids id dtype [num_masked] (what the input
  holds at each masked position: [MASK], a random id or the kept token).
doc_a / doc_b are document indices within the record's shard. The id dtype is uint16 when
the vocab fits, else int32 (meta.json "id_dtype"). `decode_batch` rebuilds the padded
arrays for a batch with a few vectorized NumPy ops.

A packed folder's record is one row of k pairs (`encode_rows`, `split_rows`):
  header  int32 [1 + k]: k, then the byte size of each pair's record
  pairs   the k pairs' records (the format above), back to back.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from flax_bert.data.vocab import SpecialIds

HEADER = np.dtype("<i4")
HEADER_FIELDS = 6
HEADER_BYTES = HEADER_FIELDS * HEADER.itemsize
POSITION = np.dtype("<u2")
MAX_SEQ_LENGTH = np.iinfo(POSITION).max  # positions are stored as uint16
UINT16_VOCAB_LIMIT = 2**16
WRITER_OPTIONS = "group_size:1,uncompressed"  # group size 1: fast random access (grain)
READER_OPTIONS = "readahead_buffer_size:0"  # random access, as grain's ArrayRecordDataSource


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= UINT16_VOCAB_LIMIT else np.dtype("<i4")


def open_reader(path) -> ArrayRecordReader:
    """A random-access reader of one shard (a local or `gs://` path)."""
    return ArrayRecordReader(str(path), READER_OPTIONS)


def read_record(reader: ArrayRecordReader, position: int) -> bytes:
    """One record. The range form of `read`: its cost does not grow with the file, unlike
    `read([position])` (which grain's ArrayRecordDataSource uses; ~30x the CPU time on a
    shard of 50k records)."""
    return reader.read(position, position + 1)[0]


def encode(pairs: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None,
           dtype: np.dtype) -> list[bytes]:
    """Records of `examples.create_pairs` output (+ `mask_batch` output when static).

    Vectorized: each section's bytes are placed in one [N, W] byte matrix (row i holds
    record i, left-aligned), then each record is one slice of its bytes."""
    n_rows, seq = pairs["input_ids"].shape
    len_a, len_b = pairs["len_a"].astype(np.int64), pairs["len_b"].astype(np.int64)  # [N]
    num_masked = (masks["masked_weights"].sum(axis=1).astype(np.int64) if masks is not None
                  else np.zeros(n_rows, np.int64))  # [N]
    header = np.stack([len_a, len_b, pairs["next_sentence_label"], pairs["doc_a"],
                       pairs["doc_b"], num_masked], axis=1).astype(HEADER)  # [N, 6]
    pos = np.arange(seq)[None, :]  # [1, L]
    in_a = (pos >= 1) & (pos <= len_a[:, None])  # [N, L]
    in_b = (pos >= len_a[:, None] + 2) & (pos < (len_a + 2 + len_b)[:, None])  # [N, L]
    sections = [pairs["input_ids"][in_a | in_b].astype(dtype)]  # [T] row-major: A, B
    sizes = [(len_a + len_b) * dtype.itemsize]  # [N] bytes of each section
    if masks is not None:
        chosen = masks["masked_weights"] > 0  # [N, P] real predictions first
        positions = masks["masked_positions"][chosen]  # [M] row-major
        rows = np.broadcast_to(np.arange(n_rows)[:, None], chosen.shape)[chosen]  # [M]
        sections += [positions.astype(POSITION), masks["input_ids"][rows, positions].astype(dtype)]
        sizes += [num_masked * POSITION.itemsize, num_masked * dtype.itemsize]
    ends = HEADER_BYTES + np.cumsum(sizes, axis=0)  # [sections, N] end of each section
    width = int(ends[-1].max(initial=HEADER_BYTES))
    out = np.zeros((n_rows, width), np.uint8)  # [N, W] record i left-aligned in row i
    out[:, :HEADER_BYTES] = header.view(np.uint8).reshape(n_rows, HEADER_BYTES)
    col = np.arange(width)[None, :]  # [1, W]
    for values, size, end in zip(sections, sizes, ends):
        out[(col >= (end - size)[:, None]) & (col < end[:, None])] = values.view(np.uint8)
    data = out.tobytes()
    return [data[i * width : i * width + e] for i, e in enumerate(ends[-1].tolist())]


def encode_rows(pair_records: Sequence[bytes], order: np.ndarray,
                row_sizes: np.ndarray) -> list[bytes]:
    """Records of rows: row i holds the pair records order[s_i : s_i + row_sizes[i]]."""
    out, start = [], 0
    for k in row_sizes.tolist():
        pairs = [pair_records[j] for j in order[start : start + k].tolist()]
        start += k
        out.append(struct.pack(f"<{1 + k}i", k, *map(len, pairs)) + b"".join(pairs))
    return out


def split_rows(rows: Sequence[bytes]) -> tuple[list[bytes], np.ndarray]:
    """(the pairs' records, rows after rows; [b] pairs of each row) of row records."""
    pairs, counts = [], np.zeros(len(rows), np.int64)
    for i, row in enumerate(rows):
        k = counts[i] = int.from_bytes(row[: HEADER.itemsize], "little")
        start = (1 + k) * HEADER.itemsize
        for end in (start + np.cumsum(np.frombuffer(row, HEADER, k, HEADER.itemsize))).tolist():
            pairs.append(row[start:end])
            start = end
    return pairs, counts


def decode_batch(records: Sequence[bytes], seq: int, preds: int, dtype: np.dtype,
                 special: SpecialIds, static: bool) -> dict[str, np.ndarray]:
    """Arrays of a batch of records: input_ids [b,L] int32 (unmasked), len_a, len_b,
    next_sentence_label, doc_a, doc_b [b] int32; with `static` also masked_input_ids
    [b,L], masked_positions, masked_ids [b,P] int32 and masked_weights [b,P] float32."""
    b = len(records)
    header = np.frombuffer(b"".join(r[:HEADER_BYTES] for r in records), HEADER)
    header = header.reshape(b, HEADER_FIELDS)  # [b, 6]
    len_a, len_b, label, doc_a, doc_b, n = (header[:, j].astype(np.int32) for j in range(6))
    n_tok = len_a + len_b  # [b]
    tok_bytes = n_tok * dtype.itemsize
    tokens = np.frombuffer(
        b"".join(r[HEADER_BYTES : HEADER_BYTES + t] for r, t in zip(records, tok_bytes)), dtype)
    pos = np.arange(seq)[None, :]  # [1, L]
    la = len_a[:, None]  # [b, 1]
    in_a = (pos >= 1) & (pos <= la)  # [b, L]
    in_b = (pos >= la + 2) & (pos < la + 2 + len_b[:, None])  # [b, L]
    ids = np.full((b, seq), special.pad, np.int32)  # [b, L]
    ids[in_a | in_b] = tokens  # row-major: A then B of each row
    ids[:, 0] = special.cls
    ids[np.arange(b), 1 + len_a] = special.sep
    ids[np.arange(b), 2 + n_tok] = special.sep
    out = dict(input_ids=ids, len_a=len_a, len_b=len_b, next_sentence_label=label,
               doc_a=doc_a, doc_b=doc_b)
    if static:
        out.update(_decode_masks(records, ids, HEADER_BYTES + tok_bytes, n, preds, dtype))
    return out


def _decode_masks(records, ids, starts, n, preds, dtype) -> dict[str, np.ndarray]:
    b = len(records)
    pos_bytes = n * POSITION.itemsize
    positions = np.frombuffer(
        b"".join(r[s : s + p] for r, s, p in zip(records, starts, pos_bytes)), POSITION)
    replaced = np.frombuffer(
        b"".join(r[s + p :] for r, s, p in zip(records, starts, pos_bytes)), dtype)
    weights = np.arange(preds)[None, :] < n[:, None]  # [b, P]
    masked_positions = np.zeros((b, preds), np.int32)  # [b, P]
    masked_positions[weights] = positions
    rows = np.broadcast_to(np.arange(b)[:, None], (b, preds))[weights]
    masked_input_ids = ids.copy()  # [b, L]
    masked_input_ids[rows, positions] = replaced
    masked_ids = np.where(weights, np.take_along_axis(ids, masked_positions, 1), 0)  # [b, P]
    return dict(masked_input_ids=masked_input_ids, masked_positions=masked_positions,
                masked_ids=masked_ids.astype(np.int32),
                masked_weights=weights.astype(np.float32))

