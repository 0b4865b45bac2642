"""Prepared folders of the data tests, made from tools/corpora.py's marker corpus (each document
has its own marker words)."""

from __future__ import annotations

import os

import numpy as np

from flax_bert.data import pipeline, prepare as prepare_lib
from flax_bert.data.config import DataOptions
from tools.corpora import marker_corpus

SHORT_DOCS = dict(num_docs=80, sentences=5, min_sentences=1)  # packs ~2.2 pairs a row at 128
_CACHE: dict = {}


def prepared(tmp_path_factory, corpus: dict | None = None,
             **overrides) -> tuple[str, dict[str, int], dict, DataOptions]:
    """(prepared dir, word->doc, meta, options) for the marker corpus (`corpus`: its
    arguments) with DataOptions overrides; cached per set for the whole test session."""
    key = (tuple(sorted((corpus or {}).items())), tuple(sorted(overrides.items())))
    if key not in _CACHE:
        root = tmp_path_factory.mktemp("prep")
        corpus_path = os.path.join(root, "corpus.txt")
        word_doc = marker_corpus(corpus_path, **(corpus or {}))
        base = dict(
            input=(corpus_path,), vocab_size=4000, max_seq_length=64,
            max_predictions_per_seq=10, eval_fraction=0.2, num_workers=1, dupe_factor=2,
        )
        base.update(overrides)
        opts = DataOptions().replace(**base)
        out = os.path.join(root, "out")
        meta = prepare_lib.prepare(opts, out, progress=False)
        _CACHE[key] = (out, word_doc, meta, opts)
    return _CACHE[key]


def unmask(batch: dict) -> np.ndarray:
    """[b, L] original token ids: input_ids with masked positions restored."""
    ids = batch["input_ids"].copy()
    rows = np.arange(len(ids))[:, None]
    keep = batch["masked_weights"] > 0
    ids[np.broadcast_to(rows, keep.shape)[keep], batch["masked_positions"][keep]] = batch[
        "masked_ids"
    ][keep]
    return ids


def read_split(out: str, split: str) -> dict[str, np.ndarray]:
    """Every example of a prepared split, decoded in order (static masks when written;
    a packed split's pairs, rows after rows, and pairs_per_row); doc_a / doc_b made unique
    over shards: shard ordinal * 2**32 + index in the shard."""
    meta = pipeline.load_meta(out)
    static = split == "eval" or meta["static_train_masks"]
    batches = pipeline._Batches(out, split, {}, global_batch_size=1, seed=0, process_index=0,
                                process_count=1, dynamic=False, train=False)
    batches.static = static  # dynamic train records carry no masks
    idx = np.arange(meta[f"num_{split}_examples"])
    arrays = batches.read(idx)
    shard = np.searchsorted(batches.ends, idx, side="right").astype(np.int64)
    shard = np.repeat(shard, arrays.get("pairs_per_row", 1))  # of each pair
    for key in ("doc_a", "doc_b"):
        arrays[key] = shard * 2**32 + arrays[key]
    return arrays
