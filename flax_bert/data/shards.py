"""The shards of a prepare: input files in groups, each group's documents cut into shards
of about data.shard_mb MB of text, and one shard of documents -> its records: tokenize,
pair (random next segments drawn within the shard), mask when static, pack into rows when
packing (packing.py), write. A picklable callable, run in prepare's worker
processes or as a Beam step; its output depends only on the shard and the options.

Shape legend: T tokens, S sentences, D documents, N pairs, L max_seq_length.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
from collections.abc import Iterator

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from flax_bert.data import corpus, examples, folder as folder_lib, packing, records, split
from flax_bert.data import storage, streams
from flax_bert.data import vocab as vocab_lib
from flax_bert.data.config import DataOptions

NUM_SPECIAL = examples.NUM_SPECIAL_IN_PAIR
SENTENCES_PER_TASK = 20_000  # Sentences tokenized at a time (bounds a worker's memory).
MB = 1 << 20


def plan_groups(sources: list[dict], shard_bytes: int) -> list[list[str]]:
    """Input files in groups read by one reader each: consecutive files up to
    shard_bytes on disk; a `datasets` folder alone. Depends on the inputs only."""
    groups, current, size = [], [], 0
    for s in sources:
        if corpus.is_dataset_dir(s["path"]):
            groups += [current] if current else []
            groups.append([s["path"]])
            current, size = [], 0
            continue
        current.append(s["path"])
        size += s["bytes"]
        if size >= shard_bytes:
            groups.append(current)
            current, size = [], 0
    return groups + ([current] if current else [])


def doc_chars(doc: list[str] | str) -> int:
    return len(doc) if isinstance(doc, str) else sum(len(s) + 1 for s in doc)


def group_shards(paths: list[str], opts: DataOptions) -> Iterator[list]:
    """The raw documents of a group, read as a stream, cut into shards of about
    opts.shard_mb MB of text."""
    shard, chars = [], 0
    for _, doc in corpus.iter_raw_documents(paths, opts.input_format, opts.text_column):
        shard.append(doc)
        chars += doc_chars(doc)
        if chars >= opts.shard_mb * MB:
            yield shard
            shard, chars = [], 0
    if shard:
        yield shard


@dataclasses.dataclass
class ShardMaker:
    """Makes and writes the records of one shard of documents: a picklable callable
    (worker processes, Beam); the tokenizer is loaded on first use."""

    opts: DataOptions
    output_dir: str
    fingerprint: str
    vocab_path: str
    _ctx: tuple | None = None

    def __getstate__(self):
        return {**self.__dict__, "_ctx": None}

    def context(self) -> tuple:
        """(tokenizer, special ids, vocab size, local vocab path), made once per process."""
        if self._ctx is None:
            local = self.vocab_path
            if "://" in local:  # the tokenizer reads a local file
                local = tempfile.mkstemp(suffix=folder_lib.VOCAB)[1]
                storage.path(self.vocab_path).copy(local, overwrite=True)
            tokenizer = vocab_lib.load_tokenizer(local, self.opts.lowercase)
            vocab_size = len(vocab_lib.read_vocab(local))
            self._ctx = (tokenizer, vocab_lib.special_ids(local), vocab_size, local)
        return self._ctx

    def __call__(self, task: tuple[int, int, list]) -> dict:
        """(group, part, raw documents) -> stats of the shard's files."""
        group, part, raw = task
        opts = self.opts
        tokenizer, special, vocab_size, vocab_path = self.context()
        docs = [d for d in (corpus.to_sentences(r, opts.input_format) for r in raw) if d]
        held = np.array([opts.eval_fraction > 0 and split.is_held_out(d, opts.eval_fraction,
                                                                       opts.prepare_seed)
                         for d in docs])
        tokens, sent_offsets, doc_offsets = _tokenize(tokenizer, docs)
        out = {"group": group, "part": part, "documents": len(docs),
               "sentences": int(len(sent_offsets) - 1), "tokens": int(len(tokens)), "splits": {}}
        for name, stream, want in (("train", streams.PAIRS, False),
                                   ("eval", streams.EVAL_PAIRS, True)):
            chosen = np.flatnonzero(held == want) if len(docs) else np.zeros(0, np.int64)
            rng = np.random.default_rng([opts.prepare_seed, group, part, stream])
            pairs = _pairs_for_docs(tokens, sent_offsets, doc_offsets, chosen, opts, special, rng)
            masks = None
            if (name == "eval" or not opts.dynamic_masking) and len(pairs["len_a"]):
                masks = examples.mask_batch(
                    pairs["input_ids"], pairs["len_a"], pairs["len_b"],
                    np.random.default_rng([opts.prepare_seed, group, part, stream,
                                           streams.MASKS]),
                    **opts.masking(vocab_size, special.mask, vocab_path))
            recs = records.encode(pairs, masks, records.id_dtype(vocab_size))
            real_tokens = pairs["len_a"].sum() + pairs["len_b"].sum() + len(recs) * NUM_SPECIAL
            info = {"documents": int(len(chosen)), "pairs": len(recs),
                    "real_tokens": int(real_tokens)}
            if opts.packing:
                order, sizes = packing.pack(
                    pairs["len_a"].astype(np.int64) + pairs["len_b"] + NUM_SPECIAL,
                    opts.max_seq_length, opts.max_pairs_per_row,
                    np.random.default_rng([opts.prepare_seed, group, part, stream,
                                           streams.PACKING]))
                recs = records.encode_rows(recs, order, sizes)
            info["records"] = len(recs)
            if recs:
                file = folder_lib.shard_name(name, self.fingerprint, group, part)
                info.update(name=file, **_write_records(self.output_dir, file, recs))
            out["splits"][name] = info
        return out


def _tokenize(tokenizer, docs: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All tokens [T] int32, sentence offsets [S+1], document offsets (in sentences) [D+1]."""
    sentences = list(itertools.chain.from_iterable(docs))
    ids, lengths = [], []
    for i in range(0, len(sentences), SENTENCES_PER_TASK):
        enc = tokenizer.encode_batch_fast(sentences[i : i + SENTENCES_PER_TASK],
                                          add_special_tokens=False)
        lengths.append(np.fromiter((len(e.ids) for e in enc), np.int64, len(enc)))
        ids.append(np.fromiter(itertools.chain.from_iterable(e.ids for e in enc), np.int32,
                               int(lengths[-1].sum())))
    lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    per_doc = np.fromiter((len(d) for d in docs), np.int64, len(docs))
    return (np.concatenate(ids) if ids else np.zeros(0, np.int32),
            np.concatenate([[0], np.cumsum(lens)]), np.concatenate([[0], np.cumsum(per_doc)]))


def _write_records(output_dir: str, name: str, recs: list[bytes]) -> dict:
    """Write one shard (through a local temp file when the folder is not local)."""
    dest = storage.path(output_dir) / name
    local = "://" not in output_dir
    path = str(dest) if local else tempfile.mkstemp(suffix=folder_lib.SHARD_SUFFIX)[1]
    writer = ArrayRecordWriter(path, records.WRITER_OPTIONS)
    for r in recs:
        writer.write(r)
    writer.close()
    if not local:
        storage.path(path).copy(dest, overwrite=True)
        os.remove(path)
    return storage.describe(dest)


def _pairs_for_docs(tokens, sent_offsets, doc_offsets, docs, opts, special, rng) -> dict:
    """Pairs of the documents `docs` (their indices kept in doc_a/doc_b)."""
    if len(docs) == 0:
        return examples.create_pairs(
            tokens, sent_offsets, np.zeros(1, np.int64), max_seq_length=opts.max_seq_length,
            short_seq_prob=opts.short_seq_prob, dupe_factor=1, special=special, rng=rng,
        )
    # Re-index the chosen documents' sentences as a contiguous list.
    sents = np.concatenate([np.arange(doc_offsets[d], doc_offsets[d + 1]) for d in docs])
    sub_doc_offsets = np.concatenate([[0], np.cumsum(doc_offsets[docs + 1] - doc_offsets[docs])])
    sent_lengths = sent_offsets[sents + 1] - sent_offsets[sents]
    sub_sent_offsets = np.concatenate([[0], np.cumsum(sent_lengths)])
    tok_start, tok_end = sent_offsets[doc_offsets[docs]], sent_offsets[doc_offsets[docs + 1]]
    sub_tokens = np.concatenate([tokens[s:e] for s, e in zip(tok_start, tok_end)])
    pairs = examples.create_pairs(
        sub_tokens, sub_sent_offsets, sub_doc_offsets, max_seq_length=opts.max_seq_length,
        short_seq_prob=opts.short_seq_prob, dupe_factor=opts.dupe_factor, special=special,
        rng=rng,
    )
    pairs["doc_a"], pairs["doc_b"] = docs[pairs["doc_a"]], docs[pairs["doc_b"]]
    return pairs
