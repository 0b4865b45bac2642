"""grain input pipeline over a prepared folder: shuffle, shard per process, batch, mask.

Records are read from the folder's ArrayRecord shards, one reader per shard opened when
first read (`records.open_reader`; `records.py` has their format); the files' sizes are
checked when the pipeline is made and each shard's checksum when it is first read
(`folder.py`). Masking and feeding follow `options.DataOptions` (config.data).

Shape legend: b per-process batch (global_batch_size // process_count), L max_seq_length,
P max_predictions_per_seq, K max_pairs_per_row. Each batch is a dict of NumPy arrays:
  input_ids [b,L] int32, token_type_ids [b,L] int32, attention_mask [b,L] int32,
  masked_positions [b,P] int32 (0 for padding predictions), masked_ids [b,P] int32,
  masked_weights [b,P] float32, next_sentence_label [b] int32
  (+ example_weight [b] float32 in eval batches: 1 real, 0 padding).
From a packed folder (meta.json "packed"; b counts rows) each row holds up to K pairs
(packing.py lists the arrays): input_ids, token_type_ids, attention_mask, position_ids,
pair_ids [b,L] int32; cls_positions, next_sentence_label [b,K] int32; pair_weights [b,K]
float32 (0 for empty slots and eval padding rows); masked_positions, masked_ids [b,M]
int32, masked_weights [b,M] float32, the row's predictions first (M =
packing.predictions_per_row). A row's pairs are masked as a flat batch of pairs, each as an
unpacked pair would be (its own min(P, max(1, round(masked_lm_prob * candidates)))
predictions), with the random numbers of its global pair slot r*K + i.

Train: element k of an endless `grain.MapDataset.range` is global batch k; global example
position g = k * global_batch_size + j reads example perm_e[g % N] with e = g // N and
perm_e a fresh permutation per epoch (`streams.epoch_indices`, seeded by (seed, e)).
Process p takes rows [p*b, (p+1)*b) of each global batch, and dynamic masks come from
(seed, k) drawn for the whole global batch, so the processes' batches stacked are exactly
the single-process batch. Everything is a pure function of k, so the iterator state is grain's next index:
`get_state()` / `set_state()` resume bit-exactly.

With config.data.worker_count > 0 batches are made in grain worker processes
(`mp_prefetch`): the batches and the state stay the same; grain then needs absl flags
parsed (absl.app does it) and the iterator should be `close()`d at the end.

Phases: with `phase1` (BERT's two-phase recipe, short examples first), batch k < steps1 is
batch k of the phase-1 folder (its own length and batch size) and batch k >= steps1 is
batch k - steps1 of the main folder; the state is still the one index.

Eval: finite, in order, static masks written by prepare; the last partial global batch is
padded with all-zero rows whose masked_weights and example_weight (packed: pair_weights)
are 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from typing import Any

import grain
import numpy as np

from flax_bert import preemption
from flax_bert.data import (examples, folder as folder_lib, packing, records, storage,
                            streams, vocab as vocab_lib)
from flax_bert.data.config import DataOptions
from flax_bert.data.folder import load_meta
from flax_bert.errors import UserError

PERM_CACHE = 2  # epochs whose permutation is kept (a batch spans at most 2 epochs)


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return process_index, process_count


def _per_process(global_batch_size: int, process_count: int) -> int:
    """This process's rows of a global batch (a run checks the sizes divide first:
    trainer/checks.check_batch)."""
    assert global_batch_size % process_count == 0, (global_batch_size, process_count)
    return global_batch_size // process_count


def check_packing(folder: str, meta: dict, options: DataOptions) -> None:
    """A UserError when config.data's packing fields are not the folder's."""
    packed, pairs = meta.get("packed", False), meta.get("max_pairs_per_row", 1)
    if options.packing != packed or (packed and options.max_pairs_per_row != pairs):
        folder_has = f"is packed, max_pairs_per_row={pairs}" if packed else "is not packed"
        raise UserError(
            f"config.data.packing={options.packing}, max_pairs_per_row="
            f"{options.max_pairs_per_row} but {folder} {folder_has} (its meta.json); set "
            f"them to the folder's or re-run prepare (or delete {folder})")


@dataclasses.dataclass(frozen=True)
class Phase1:
    """The first `steps` train batches come from `prepared_dir` (shorter examples, prepared
    with the main folder's vocab) at `global_batch_size`, masked as `options` say."""

    prepared_dir: str
    options: DataOptions
    global_batch_size: int
    steps: int


class _Batches:
    """Random access to batches: batch k of a split (picklable for grain workers)."""

    def __init__(self, prepared_dir: str, split: str, options: DataOptions, *,
                 global_batch_size: int, seed: int, process_index: int, process_count: int,
                 dynamic: bool, train: bool):
        meta = load_meta(prepared_dir)
        self.dir, self.split, self.train, self.dynamic = prepared_dir, split, train, dynamic
        self.seed, self.global_batch = seed, global_batch_size
        self.b = _per_process(global_batch_size, process_count)
        self.offset = process_index * self.b
        self.n = meta[f"num_{split}_examples"]  # records: rows when packed
        self.packed = meta.get("packed", False)
        self.pairs_per_row = meta.get("max_pairs_per_row", 1)  # pair slots of a row
        self.seq = meta["max_seq_length"]
        self.preds = meta["max_predictions_per_seq"]
        special = meta["special_ids"]
        self.mask_kwargs = (
            options.masking(meta["vocab_size"], special["mask"],
                            os.path.join(prepared_dir, folder_lib.VOCAB))
            if dynamic else None
        )
        if self.mask_kwargs and self.mask_kwargs["max_predictions"] != self.preds:
            raise UserError(
                f"config.data.max_predictions_per_seq={self.mask_kwargs['max_predictions']} "
                f"but {prepared_dir}/meta.json has {self.preds}; set "
                f"--config.data.max_predictions_per_seq={self.preds} or prepare again with "
                f"--config.data.max_predictions_per_seq={self.mask_kwargs['max_predictions']}"
            )
        self.meta, self.static = meta, not dynamic
        masked_lm_prob = (options.masked_lm_prob if dynamic
                          else meta["options"]["masked_lm_prob"])  # of the static masks
        self.row_predictions = packing.predictions_per_row(
            masked_lm_prob, self.seq, self.pairs_per_row, self.preds)  # M slots a row
        self.names = [shard["name"] for shard in meta["shards"][split]]
        self.counts = np.array([shard["records"] for shard in meta["shards"][split]])  # [shards]
        self.ends = np.cumsum(self.counts)  # [shards]
        self.special = vocab_lib.SpecialIds(**special)
        self.id_dtype = np.dtype(meta["id_dtype"])
        self._readers: dict[int, Any] = {}
        self._perms: dict[int, np.ndarray] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_readers"], state["_perms"] = {}, {}
        return state

    def _reader(self, shard: int):
        """The shard's reader, opened (after checking its checksum) on first use."""
        if shard not in self._readers:
            folder = storage.path(self.dir)
            folder_lib.verify_file(folder, self.names[shard], self.meta)
            self._readers[shard] = records.open_reader(folder / self.names[shard])
        return self._readers[shard]

    def read(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Decoded records idx [b] of the split (packed: their pairs, rows after rows, and
        pairs_per_row [b]); a shard's checksum is checked when it is first read (a
        UserError names an altered shard)."""
        shards = np.searchsorted(self.ends, idx, side="right")  # [b]
        positions = idx - (self.ends - self.counts)[shards]  # [b] record within its shard
        recs = [records.read_record(self._reader(s), p)
                for s, p in zip(shards.tolist(), positions.tolist())]
        if not self.packed:
            return records.decode_batch(recs, self.seq, self.preds, self.id_dtype,
                                        self.special, self.static)
        pairs, per_row = records.split_rows(recs)
        return dict(records.decode_batch(pairs, self.seq, self.preds, self.id_dtype,
                                         self.special, self.static), pairs_per_row=per_row)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= PERM_CACHE:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = streams.permutation(self.seed, streams.TRAIN_ORDER, epoch,
                                                     self.n)
        return self._perms[epoch]

    def __call__(self, k: int, _=None) -> dict[str, np.ndarray]:
        g = k * self.global_batch + self.offset + np.arange(self.b)  # [b] global positions
        if self.train:
            idx = streams.epoch_indices(g, self.n, self._perm)
            valid = np.ones(self.b, bool)
        else:
            valid = g < self.n
            idx = np.where(valid, g, 0)
        a = self.read(idx)
        k_slots = self.pairs_per_row
        # [b] rows, or packed: [n] pairs in b*K slots (row r's pair i in slot r*K + i)
        slot = (packing.slots(a.pop("pairs_per_row"), k_slots) if self.packed
                else np.arange(self.b))
        len_a, len_b = a["len_a"], a["len_b"]  # [b] or [n]
        if self.dynamic:
            rng = np.random.default_rng([self.seed, streams.TRAIN_MASKS, k])
            m = examples.mask_batch(
                a["input_ids"], len_a, len_b, rng, global_rows=self.global_batch * k_slots,
                rows=self.offset * k_slots + slot, **self.mask_kwargs,
            )
        else:
            m = dict(a, input_ids=a["masked_input_ids"])
        if self.packed:
            batch = packing.rows(m, len_a, len_b, a["next_sentence_label"], slot, self.b,
                                 k_slots, self.row_predictions, self.special.pad)
        else:
            token_type_ids, attention_mask = examples.segment_arrays(len_a, len_b, self.seq)
            batch = dict(
                input_ids=m["input_ids"],
                token_type_ids=token_type_ids,
                attention_mask=attention_mask,
                masked_positions=m["masked_positions"],
                masked_ids=m["masked_ids"],
                masked_weights=m["masked_weights"],
                next_sentence_label=a["next_sentence_label"],
            )
        if not self.train:
            for key, value in batch.items():
                row_valid = valid.reshape((-1,) + (1,) * (value.ndim - 1))  # [b, 1...]
                batch[key] = value * row_valid.astype(value.dtype)
            if not self.packed:  # packed: pair_weights weigh the pairs
                batch["example_weight"] = valid.astype(np.float32)
        return batch


class _Phased:
    """Batch k from phase 1 while k < its steps, then from the main batches."""

    def __init__(self, first: _Batches, steps: int, then: _Batches):
        self.first, self.steps, self.then = first, steps, then

    def __call__(self, k: int, _=None) -> dict[str, np.ndarray]:
        return self.first(k) if k < self.steps else self.then(k - self.steps)


def make_train_iterator(
    prepared_dir: str,
    options: DataOptions,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    phase1: Phase1 | None = None,
) -> grain.DatasetIterator:
    """Endless, shuffled (new order each epoch), dynamically masked train batches for this
    process, from `phase1` first when given; supports next(), get_state(), set_state()."""
    process_index, process_count = _process(process_index, process_count)

    def train_batches(folder: str, opts: DataOptions, batch_size: int) -> _Batches:
        meta = load_meta(folder)
        check_packing(folder, meta, opts)
        if not opts.dynamic_masking and not meta["static_train_masks"]:
            raise UserError(
                f"config.data.dynamic_masking=False but {folder} has no static masks; "
                f"re-run prepare with --no-dynamic-masking (or delete {folder})"
            )
        return _Batches(
            folder, "train", opts, global_batch_size=batch_size, seed=seed,
            process_index=process_index, process_count=process_count,
            dynamic=opts.dynamic_masking, train=True,
        )

    batches = train_batches(prepared_dir, options, global_batch_size)
    if phase1 is not None:
        first = train_batches(phase1.prepared_dir, phase1.options, phase1.global_batch_size)
        batches = _Phased(first, phase1.steps, batches)
    ds = grain.MapDataset.range(sys.maxsize).map_with_index(batches)
    prefetch = options.prefetch
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=1 if prefetch > 0 else 0, prefetch_buffer_size=prefetch)
    )
    if options.worker_count > 0:
        it_ds = it_ds.mp_prefetch(  # workers that end with this process, however it ends
            grain.MultiprocessingOptions(num_workers=options.worker_count),
            worker_init_fn=functools.partial(preemption.follow_parent, os.getpid()))
    return iter(it_ds)


def make_eval_iterator(
    prepared_dir: str,
    options: DataOptions,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Finite, deterministic batches over the held-out split (re-iterable; each pass starts
    over). The last partial batch is padded: padding rows are all zero with
    masked_weights = 0 and example_weight = 0."""
    process_index, process_count = _process(process_index, process_count)
    meta = load_meta(prepared_dir)
    check_packing(prepared_dir, meta, options)
    batches = _Batches(
        prepared_dir, "eval", options, global_batch_size=global_batch_size, seed=0,
        process_index=process_index, process_count=process_count, dynamic=False, train=False,
    )
    num_batches = math.ceil(meta["num_eval_examples"] / global_batch_size)
    ds = grain.MapDataset.range(num_batches).map_with_index(batches)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
