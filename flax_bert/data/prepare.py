"""Prepare step: corpus -> WordPiece vocab -> tokenized NSP pairs on disk (+ held-out split).

    python -m flax_bert.data.prepare --input data/corpus/*.txt.gz --output /tmp/prepared \
        [--vocab-size 8192 | --vocab vocab.txt] --max-seq-length 128

Output folder (read back by `pipeline.py` without re-tokenizing):
  vocab.txt                       the vocab used (trained or copied)
  train/*.npy, eval/*.npy         input_ids [N,L] (unmasked, uint16 when the vocab fits,
                                  else int32), len_a/len_b/next_sentence_label/doc_a/doc_b
                                  [N] int32; static masks (train when not dynamic_masking,
                                  eval always): masked_input_ids [N,L], masked_positions,
                                  masked_ids [N,P] int32, masked_weights [N,P] float32
  meta.json                       vocab_size, counts, options, source files (written last)

Evaluation documents are whole documents held out (`eval_fraction`), paired only among
themselves. `prepare_from_config` is a no-op when meta.json exists with the same options.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from tqdm import tqdm

from flax_bert.data import corpus, examples, vocab as vocab_lib
from flax_bert.errors import UserError

FORMAT_VERSION = 1  # Bump when the on-disk layout changes (invalidates caches).
SENTENCES_PER_TASK = 20_000  # Sentences sent to a tokenizing worker at a time.
IN_FLIGHT_PER_WORKER = 2  # Tasks queued per worker (bounds memory on big corpora).
MIN_TRAIN_DOCS = 2  # NSP needs a document other than A's.
MIN_EVAL_DOCS = 2
EVAL_MASK_SEED_OFFSET = 1  # Eval masks use seed + this (train static masks use seed).
UINT16_VOCAB_LIMIT = 2**16


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides the prepared output; defaults = configs/default.py."""

    input: tuple[str, ...] = ("data/corpus/*.txt.gz",)
    input_format: str = "auto"
    text_column: str = "text"
    vocab: str = ""
    vocab_size: int = 8192
    lowercase: bool = True
    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    whole_word_masking: bool = False
    dynamic_masking: bool = True
    dupe_factor: int = 5
    eval_fraction: float = 0.02
    seed: int = 12345
    num_workers: int = 0  # not part of the cache key: results do not depend on it

    def cache_key(self) -> dict:
        key = dataclasses.asdict(self)
        key.pop("num_workers")
        key["input"] = list(self.input)
        return key


def config_value(data_config, key: str, default=None):
    """data_config[key] for a ConfigDict, a dict or an object with attributes."""
    if isinstance(data_config, dict) or hasattr(data_config, "get"):
        return data_config.get(key, default)
    return getattr(data_config, key, default)


def options_from_config(data_config) -> PrepareOptions:
    """PrepareOptions from `config.data` (an ml_collections ConfigDict or a dict)."""
    fields = {f.name: f.default for f in dataclasses.fields(PrepareOptions)}
    kw = {name: config_value(data_config, name, default) for name, default in fields.items()}
    kw["seed"] = config_value(data_config, "prepare_seed", fields["seed"])
    inp = kw["input"]
    kw["input"] = tuple(p.strip() for p in inp.split(",")) if isinstance(inp, str) else tuple(inp)
    return PrepareOptions(**kw)


def phase1_config(data_config, seq_length: int, vocab_path: str) -> dict:
    """`config.data` (a ConfigDict or dict) for phase 1: the same corpus, split and masking
    at `seq_length`, with the main folder's vocab; max_predictions_per_seq scales with the
    length (20 at 128 is 5 at 32), as BERT's did from 128 to 512."""
    config = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
    main_length = config_value(data_config, "max_seq_length")
    config["max_predictions_per_seq"] = math.ceil(
        config_value(data_config, "max_predictions_per_seq") * seq_length / main_length)
    config["max_seq_length"], config["vocab"] = seq_length, vocab_path
    return config


def prepare_from_config(data_config, output_dir: str) -> dict:
    """Prepare `config.data`'s corpus into output_dir (cached); returns meta."""
    return prepare(options_from_config(data_config), output_dir)


def _source_files(opts: PrepareOptions) -> list[dict]:
    paths = corpus.expand_inputs(list(opts.input))
    return [{"path": os.path.abspath(p), "bytes": _size(p)} for p in paths]


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def _vocab_fingerprint(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def prepare(
    opts: PrepareOptions, output_dir: str, *, force: bool = False, progress: bool = True
) -> dict:
    """Tokenize the corpus once and write the prepared folder; returns meta."""
    sources = _source_files(opts)
    key = opts.cache_key()
    key["vocab_sha256"] = _vocab_fingerprint(opts.vocab) if opts.vocab else ""
    key["format_version"] = FORMAT_VERSION
    meta_path = os.path.join(output_dir, "meta.json")
    if not force and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("options") == key and meta.get("source_files") == sources:
            return meta
    _validate(opts)
    paths = [s["path"] for s in sources]
    os.makedirs(output_dir, exist_ok=True)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the folder is invalid until the new meta.json is written
    vocab_path = os.path.join(output_dir, "vocab.txt")
    if opts.vocab:
        vocab_lib.read_vocab(opts.vocab)
        if os.path.abspath(opts.vocab) != os.path.abspath(vocab_path):
            shutil.copyfile(opts.vocab, vocab_path)
    else:
        sentences = (
            s for _, d in corpus.iter_raw_documents(paths, opts.input_format, opts.text_column)
            for s in corpus.to_sentences(d, opts.input_format)
        )
        vocab_lib.train_vocab(sentences, opts.vocab_size, opts.lowercase, output_dir)
    special = vocab_lib.special_ids(vocab_path)
    vocab_size = len(vocab_lib.read_vocab(vocab_path))

    tokens, sent_offsets, doc_offsets = tokenize_corpus(paths, opts, vocab_path, progress)
    num_docs = len(doc_offsets) - 1
    if num_docs < MIN_TRAIN_DOCS:
        raise UserError(
            f"{', '.join(opts.input)}: {num_docs} document(s); need at least {MIN_TRAIN_DOCS} "
            f"documents separated by a blank line (one sentence per line)"
        )
    rng = np.random.default_rng(opts.seed)
    doc_order = rng.permutation(num_docs)
    n_eval = 0
    if opts.eval_fraction > 0:
        n_eval = max(MIN_EVAL_DOCS, int(round(opts.eval_fraction * num_docs)))
        if num_docs - n_eval < MIN_TRAIN_DOCS:
            raise UserError(
                f"{', '.join(opts.input)}: {num_docs} documents are too few for a held-out "
                f"split; add documents or set --eval-fraction 0 (config.data.eval_fraction)"
            )
    splits = {"eval": np.sort(doc_order[:n_eval]), "train": np.sort(doc_order[n_eval:])}
    counts = {}
    for split, docs in splits.items():
        pairs = _pairs_for_docs(tokens, sent_offsets, doc_offsets, docs, opts, special, rng)
        static = split == "eval" or not opts.dynamic_masking
        if static and len(pairs["input_ids"]):
            seed = opts.seed + (EVAL_MASK_SEED_OFFSET if split == "eval" else 0)
            pairs.update(_static_masks(pairs, opts, vocab_size, special, vocab_path, seed))
        _write_split(os.path.join(output_dir, split), pairs, vocab_size)
        counts[split] = len(pairs["input_ids"])
    if counts["train"] == 0:
        raise UserError(f"{', '.join(opts.input)}: no training pairs could be made; add text")
    meta = dict(
        vocab_size=vocab_size,
        max_seq_length=opts.max_seq_length,
        max_predictions_per_seq=opts.max_predictions_per_seq,
        num_train_examples=counts["train"],
        num_eval_examples=counts["eval"],
        num_documents=num_docs,
        num_train_documents=int(len(splits["train"])),
        num_eval_documents=int(len(splits["eval"])),
        num_sentences=int(len(sent_offsets) - 1),
        num_tokens=int(len(tokens)),
        special_ids=dataclasses.asdict(special),
        static_train_masks=not opts.dynamic_masking,
        options=key,
        source_files=sources,
    )
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(meta_path + ".tmp", meta_path)
    return meta


def _validate(opts: PrepareOptions) -> None:
    checks = [
        (opts.max_seq_length > examples.NUM_SPECIAL_IN_PAIR + 1, "max_seq_length", "> 4"),
        (0 <= opts.short_seq_prob <= 1, "short_seq_prob", "in [0, 1]"),
        (0 < opts.masked_lm_prob < 1, "masked_lm_prob", "in (0, 1)"),
        (opts.max_predictions_per_seq >= 1, "max_predictions_per_seq", ">= 1"),
        (opts.mask_token_prob + opts.random_token_prob <= 1,
         "mask_token_prob + random_token_prob", "<= 1"),
        (opts.dupe_factor >= 1, "dupe_factor", ">= 1"),
        (0 <= opts.eval_fraction < 1, "eval_fraction", "in [0, 1)"),
        (opts.vocab or opts.vocab_size > len(vocab_lib.SPECIAL_TOKENS), "vocab_size", "> 5"),
    ]
    for ok, field, rule in checks:
        if not ok:
            raise UserError(f"config.data.{field} must be {rule}; fix the config / flag")


# ---- Tokenization (in worker processes) ----------------------------------------------------
_worker_tokenizer = None


def _init_worker(vocab_path: str, lowercase: bool) -> None:
    global _worker_tokenizer
    _worker_tokenizer = vocab_lib.load_tokenizer(vocab_path, lowercase)


def _tokenize_task(task: tuple[list, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [T], sentence lengths [S], sentences per document [D]) of a list of documents."""
    docs, input_format = task
    docs = [corpus.to_sentences(d, input_format) for d in docs]
    sentences = list(itertools.chain.from_iterable(docs))
    encodings = _worker_tokenizer.encode_batch_fast(sentences, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
    ids = np.fromiter(
        itertools.chain.from_iterable(e.ids for e in encodings), np.int32, int(lengths.sum())
    )
    per_doc = np.fromiter((len(d) for d in docs), np.int64, len(docs))
    return ids, lengths, per_doc


def _tasks(paths, opts) -> Iterator[tuple[list, str]]:
    batch, n = [], 0
    for _, doc in corpus.iter_raw_documents(paths, opts.input_format, opts.text_column):
        batch.append(doc)
        n += len(doc) if isinstance(doc, list) else doc.count("\n") + 1
        if n >= SENTENCES_PER_TASK:
            yield batch, opts.input_format
            batch, n = [], 0
    if batch:
        yield batch, opts.input_format


def _ordered(executor: ProcessPoolExecutor, tasks: Iterator, in_flight: int) -> Iterator:
    """Results of `_tokenize_task` over tasks, in order, with at most in_flight pending
    (the corpus is read as the workers go, not all at once)."""
    pending: collections.deque = collections.deque()
    for task in tasks:
        pending.append(executor.submit(_tokenize_task, task))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def tokenize_corpus(
    paths: list[str], opts: PrepareOptions, vocab_path: str, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All tokens [T] int32, sentence offsets [S+1], document offsets (in sentences) [D+1]."""
    workers = opts.num_workers or os.cpu_count() or 1
    tasks = _tasks(paths, opts)
    executor = None
    if workers == 1:
        _init_worker(vocab_path, opts.lowercase)
        results: Iterable = map(_tokenize_task, tasks)
    else:
        # spawn, not fork: the caller (train.py) may already run JAX threads. An executor
        # (not a Pool) so a worker that dies raises instead of hanging.
        executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(vocab_path, opts.lowercase),
        )
        results = _ordered(executor, tasks, IN_FLIGHT_PER_WORKER * workers)
    ids, lengths, per_doc = [], [], []
    try:
        # disable=None: no bar when stderr is not a terminal (logs, captured subprocesses).
        bar_off = None if progress else True
        with tqdm(desc="tokenizing", unit=" sent", disable=bar_off, file=sys.stderr) as bar:
            for i, l, d in results:
                ids.append(i), lengths.append(l), per_doc.append(d)
                bar.update(len(l))
    except BrokenProcessPool as e:
        raise RuntimeError(
            "a tokenizing worker died (run the caller under `if __name__ == '__main__':`, "
            "or set --num-workers 1)"
        ) from e
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    lengths_all, per_doc_all = cat(lengths, np.int64), cat(per_doc, np.int64)
    keep = per_doc_all > 0
    sent_offsets = np.concatenate([[0], np.cumsum(lengths_all)])
    doc_offsets = np.concatenate([[0], np.cumsum(per_doc_all[keep])])
    return cat(ids, np.int32), sent_offsets, doc_offsets


# ---- Pairs, static masks, writing ---------------------------------------------------------
def _pairs_for_docs(tokens, sent_offsets, doc_offsets, docs, opts, special, rng) -> dict:
    """Pairs of the documents `docs` (global ids kept in doc_a/doc_b)."""
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


def masking_kwargs(opts_or_config, vocab_size: int, mask_id: int, vocab_path: str) -> dict:
    """Keyword arguments of `examples.mask_batch` from options or `config.data`."""
    g = lambda k: config_value(opts_or_config, k)  # noqa: E731
    return dict(
        vocab_size=vocab_size,
        mask_id=mask_id,
        masked_lm_prob=g("masked_lm_prob"),
        max_predictions=g("max_predictions_per_seq"),
        mask_token_prob=g("mask_token_prob"),
        random_token_prob=g("random_token_prob"),
        continuation=vocab_lib.continuation_table(vocab_path) if g("whole_word_masking") else None,
    )


def _static_masks(pairs, opts, vocab_size, special, vocab_path, seed) -> dict:
    out = examples.mask_batch(
        pairs["input_ids"], pairs["len_a"], pairs["len_b"], np.random.default_rng(seed),
        **masking_kwargs(opts, vocab_size, special.mask, vocab_path),
    )
    return dict(
        masked_input_ids=out["input_ids"], masked_positions=out["masked_positions"],
        masked_ids=out["masked_ids"], masked_weights=out["masked_weights"],
    )


def _write_split(split_dir: str, arrays: dict, vocab_size: int) -> None:
    os.makedirs(split_dir, exist_ok=True)
    id_dtype = np.uint16 if vocab_size <= UINT16_VOCAB_LIMIT else np.int32
    for name, arr in arrays.items():
        if name in ("input_ids", "masked_input_ids"):
            arr = arr.astype(id_dtype)
        np.save(os.path.join(split_dir, f"{name}.npy"), arr)


# ---- CLI ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    d = PrepareOptions()
    p = argparse.ArgumentParser(
        prog="python -m flax_bert.data.prepare", description=__doc__.splitlines()[0]
    )
    p.add_argument("--input", nargs="+", required=True, help="files, globs or a datasets dir")
    p.add_argument("--output", required=True, help="prepared folder to write")
    p.add_argument("--input-format", default=d.input_format,
                   choices=["auto", "sentences", "paragraphs"])
    p.add_argument("--text-column", default=d.text_column)
    p.add_argument("--vocab", default=d.vocab, help="existing vocab.txt (else one is trained)")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--no-lowercase", action="store_true", help="keep case and accents")
    p.add_argument("--max-seq-length", type=int, default=d.max_seq_length)
    p.add_argument("--short-seq-prob", type=float, default=d.short_seq_prob)
    p.add_argument("--masked-lm-prob", type=float, default=d.masked_lm_prob)
    p.add_argument("--max-predictions-per-seq", type=int, default=d.max_predictions_per_seq)
    p.add_argument("--whole-word-masking", action="store_true")
    p.add_argument("--static-masking", action="store_true", help="fix train masks now")
    p.add_argument("--dupe-factor", type=int, default=d.dupe_factor)
    p.add_argument("--eval-fraction", type=float, default=d.eval_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="0 = all cores")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = PrepareOptions(
        input=tuple(args.input), input_format=args.input_format, text_column=args.text_column,
        vocab=args.vocab, vocab_size=args.vocab_size, lowercase=not args.no_lowercase,
        max_seq_length=args.max_seq_length, short_seq_prob=args.short_seq_prob,
        masked_lm_prob=args.masked_lm_prob, max_predictions_per_seq=args.max_predictions_per_seq,
        whole_word_masking=args.whole_word_masking, dynamic_masking=not args.static_masking,
        dupe_factor=args.dupe_factor, eval_fraction=args.eval_fraction, seed=args.seed,
        num_workers=args.num_workers,
    )
    try:
        meta = prepare(opts, args.output, force=args.force)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.output}: {meta['num_train_examples']} train / {meta['num_eval_examples']} eval "
        f"examples, vocab {meta['vocab_size']}, {meta['num_documents']} documents"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
