"""Prepare step: corpus -> WordPiece vocab -> shards of tokenized NSP pairs (+ held-out split).

    python -m flax_bert.data.prepare --input data/corpus/*.txt.gz --output /tmp/prepared \
        [--vocab-size 8192 | --vocab vocab.txt] --max-seq-length 128 \
        [--shard-index I --num-shards N]   # one process per machine, each a share

Streaming and sharded: the input files are grouped (consecutive files up to `shard_mb` on
disk; a `datasets` folder alone), each group is read as a stream and cut into shards of
about `shard_mb` MB of text, and each shard is tokenized, paired (random next segments drawn
within the shard, as google-research/bert does per input file), masked when static and
written on its own, in a worker process. Memory is bounded by the shard size; the output
depends on the options and the inputs, never on the number of workers or machines. The
held-out split is whole documents chosen by a hash of each document (`split.py`), so any
shard decides alone. The same per-shard functions run as a Beam pipeline
(`beam_prepare.py`). The folder's layout and its integrity checks: `prepared.py`; the
record format: `records.py`. `prepare_from_config` is a no-op when meta.json exists with
the same options and inputs.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from flax_bert.data import corpus, examples, prepared, records, split, storage
from flax_bert.data import vocab as vocab_lib
from flax_bert.errors import UserError

SENTENCES_PER_TASK = 20_000  # Sentences tokenized at a time (bounds a worker's memory).
IN_FLIGHT_PER_WORKER = 2  # Shards queued per worker (bounds the reader's memory).
POLL_SECONDS = 0.2  # The main thread waits for a shard in slices: a signal is seen within one.
MIN_TRAIN_DOCS = 2  # NSP needs a document other than A's.
MIN_EVAL_DOCS = 2
MB = 1 << 20
EVAL_STREAM = 1  # rng streams of a shard: pairs of train / eval, static masks
MASK_STREAM = 2


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
    eval_fraction: float = 0.15
    seed: int = 12345
    shard_mb: float = 8.0
    vocab_sample_mb: float = 256.0
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
    return [{"path": _abspath(p), "bytes": _size(p)} for p in paths]


def _abspath(p: str) -> str:
    return p if "://" in p else os.path.abspath(p)


def _size(path: str) -> int:
    p = storage.path(path)
    if p.is_dir():  # a `datasets` folder
        return sum((d / f).stat().length for d, _, files in p.walk() for f in files)
    return p.stat().length


def cache_key(opts: PrepareOptions, sources: list[dict]) -> tuple[dict, str]:
    """(meta.json's "options", the fingerprint in shard names) of options and inputs."""
    key = opts.cache_key()
    key["vocab_crc32"] = storage.crc32(storage.path(opts.vocab)) if opts.vocab else 0
    key["format_version"] = prepared.FORMAT_VERSION
    blob = json.dumps({"options": key, "sources": sources}, sort_keys=True).encode()
    return key, hashlib.sha256(blob).hexdigest()[:8]


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


def _doc_chars(doc: list[str] | str) -> int:
    return len(doc) if isinstance(doc, str) else sum(len(s) + 1 for s in doc)


def group_shards(paths: list[str], opts: PrepareOptions) -> Iterator[list]:
    """The raw documents of a group, read as a stream, cut into shards of about
    opts.shard_mb MB of text."""
    shard, chars = [], 0
    for _, doc in corpus.iter_raw_documents(paths, opts.input_format, opts.text_column):
        shard.append(doc)
        chars += _doc_chars(doc)
        if chars >= opts.shard_mb * MB:
            yield shard
            shard, chars = [], 0
    if shard:
        yield shard


@dataclasses.dataclass
class ShardMaker:
    """Makes and writes the records of one shard of documents: a picklable callable
    (worker processes, Beam); the tokenizer is loaded on first use."""

    opts: PrepareOptions
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
                local = tempfile.mkstemp(suffix=prepared.VOCAB)[1]
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
                                                                       opts.seed) for d in docs])
        tokens, sent_offsets, doc_offsets = _tokenize(tokenizer, docs)
        out = {"group": group, "part": part, "documents": len(docs),
               "sentences": int(len(sent_offsets) - 1), "tokens": int(len(tokens)), "splits": {}}
        for name, stream, want in (("train", 0, False), ("eval", EVAL_STREAM, True)):
            chosen = np.flatnonzero(held == want) if len(docs) else np.zeros(0, np.int64)
            rng = np.random.default_rng([opts.seed, group, part, stream])
            pairs = _pairs_for_docs(tokens, sent_offsets, doc_offsets, chosen, opts, special, rng)
            masks = None
            if (name == "eval" or not opts.dynamic_masking) and len(pairs["len_a"]):
                masks = examples.mask_batch(
                    pairs["input_ids"], pairs["len_a"], pairs["len_b"],
                    np.random.default_rng([opts.seed, group, part, stream, MASK_STREAM]),
                    **masking_kwargs(opts, vocab_size, special.mask, vocab_path))
            recs = records.encode(pairs, masks, records.id_dtype(vocab_size))
            info = {"documents": int(len(chosen)), "records": len(recs)}
            if recs:
                file = prepared.shard_name(name, self.fingerprint, group, part)
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
    path = str(dest) if local else tempfile.mkstemp(suffix=prepared.SHARD_SUFFIX)[1]
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


# ---- The whole prepare ------------------------------------------------------------------
def prepare(
    opts: PrepareOptions, output_dir: str, *, force: bool = False, progress: bool = True,
    shard_index: int = 0, num_shards: int = 1,
) -> dict:
    """Prepare the corpus into output_dir (cached); returns meta. With num_shards > 1 this
    process makes the groups g with g % num_shards == shard_index; the process that
    finishes last writes meta.json (and returns it; the others return {})."""
    plan = start(opts, output_dir, force=force, shard_parallel=num_shards > 1)
    if plan.meta is not None:
        return plan.meta
    mine = [(g, paths) for g, paths in enumerate(plan.groups) if g % num_shards == shard_index]
    stats = list(_run_local(plan.maker, mine, opts, progress))
    if num_shards == 1:
        return finish(plan, stats)
    return finish_share(plan, stats, shard_index, num_shards)


@dataclasses.dataclass
class Plan:
    """What `start` decided: the cached meta, or the work to do."""

    meta: dict | None
    key: dict
    sources: list[dict]
    groups: list[list[str]]
    maker: ShardMaker | None
    output_dir: str


def start(opts: PrepareOptions, output_dir: str, *, force: bool = False,
          shard_parallel: bool = False) -> Plan:
    """Check the folder, write the vocab, plan the groups (or find the cached meta)."""
    sources = _source_files(opts)
    key, fingerprint = cache_key(opts, sources)
    folder = storage.path(output_dir)
    old = prepared.read_meta(folder) if folder.exists() else None
    if old is not None and old.get("fingerprint") == fingerprint and not force:
        return Plan(prepared.load_meta(output_dir), key, sources, [], None, output_dir)
    _validate(opts)
    _claim(folder, fingerprint, old, force)
    vocab_path = str(folder / prepared.VOCAB)
    if opts.vocab:
        vocab_lib.read_vocab(opts.vocab)
        if _abspath(opts.vocab) != _abspath(vocab_path):
            storage.path(opts.vocab).copy(folder / prepared.VOCAB, overwrite=True)
    else:
        if shard_parallel:
            raise UserError("--num-shards > 1 needs --vocab (a vocab.txt every process shares); "
                            "train one first with a single prepare")
        with tempfile.TemporaryDirectory() as tmp:  # trained locally, then copied
            paths = [s["path"] for s in sources]
            trained = vocab_lib.train_vocab(lambda: _vocab_sample(opts, paths),
                                            opts.vocab_size, opts.lowercase, tmp)
            storage.path(trained).copy(folder / prepared.VOCAB, overwrite=True)
    maker = ShardMaker(opts, output_dir, fingerprint, vocab_path)
    return Plan(None, key, sources, plan_groups(sources, opts.shard_mb * MB), maker, output_dir)


def _vocab_sample(opts: PrepareOptions, paths: list[str]) -> Iterator[str]:
    """Sentences of the first opts.vocab_sample_mb MB of text (vocab training streams)."""
    chars = 0
    for _, doc in corpus.iter_raw_documents(paths, opts.input_format, opts.text_column):
        sentences = corpus.to_sentences(doc, opts.input_format)
        yield from sentences
        chars += _doc_chars(sentences)
        if chars >= opts.vocab_sample_mb * MB:
            return


def _claim(folder, fingerprint: str, old: dict | None, force: bool) -> None:
    """Make the folder ours: another prepare's meta.json or shards are an error, or with
    --force removed. Shards of this fingerprint (a run cut short) are overwritten."""
    foreign = [p for p in folder.iterdir() if prepared.is_shard(p.name)
               and prepared.fingerprint_of(p.name) != fingerprint] if folder.exists() else []
    if old is not None or foreign:
        if not force:
            what = folder / prepared.META if old is not None else foreign[0]
            raise UserError(
                f"{what}: the folder holds another prepare's data (other options or inputs); "
                f"choose another --output (config.data.prepared_dir), delete {folder}, or "
                f"pass --force to replace it")
        (folder / prepared.META).unlink(missing_ok=True)
        for p in foreign:
            p.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def _run_local(maker: ShardMaker, groups: list[tuple[int, list[str]]], opts: PrepareOptions,
               progress: bool) -> Iterator[dict]:
    """Stats of every shard of the groups, made in worker processes (one shard each).
    SIGTERM / SIGINT stop it (`stop_on_signals`): the workers are killed at once; they
    also die with this process, even a kill -9 of it (`_init_worker`)."""
    tasks = ((g, part, docs) for g, paths in groups
             for part, docs in enumerate(group_shards(paths, opts)))
    workers = opts.num_workers or os.cpu_count() or 1
    executor = None
    with stop_on_signals(maker.output_dir):
        if workers == 1:
            results: Iterable = map(maker, tasks)
        else:
            # spawn, not fork: the caller (train.py) may already run JAX threads. An
            # executor (not a Pool) so a worker that dies raises instead of hanging.
            executor = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(maker, os.getpid()))
            results = _ordered(executor, tasks, IN_FLIGHT_PER_WORKER * workers)
        try:
            # disable=None: no bar when stderr is not a terminal (logs, captured subprocesses).
            with tqdm(desc="preparing", unit=" shard", disable=None if progress else True,
                      file=sys.stderr) as bar:
                for stats in results:
                    bar.update(1)
                    yield stats
        except BrokenProcessPool as e:
            raise RuntimeError(
                "a prepare worker died (run the caller under `if __name__ == '__main__':`, "
                "or set --num-workers 1)"
            ) from e
        except BaseException:  # a signal, an error: no shard of this run is awaited
            if executor is not None:
                for process in list(executor._processes.values()):  # no public kill (3.14 has)
                    process.kill()
            raise
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)


@contextlib.contextmanager
def stop_on_signals(output_dir: str) -> Iterator[None]:
    """SIGTERM / SIGINT raise `Interrupted` (exit code 128 + the signal) with how to resume,
    in the main thread (elsewhere a no-op: only it gets signals). A second signal of the
    same kind gets the default behaviour (an immediate exit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from flax_bert.training.preemption import SIGNALS, Interrupted

    previous = {}

    def handle(signum: int, frame) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise Interrupted(
            f"prepare of {output_dir} interrupted ({signal.Signals(signum).name}); rerun the "
            f"same command to resume: this prepare's shards are overwritten and meta.json is "
            f"written last, so a half-prepared folder is never used", 128 + signum)

    for signum in SIGNALS:
        previous[signum] = signal.signal(signum, handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(signum, handler)


_worker_maker: ShardMaker | None = None
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent ends


def _init_worker(maker: ShardMaker, parent: int) -> None:
    """A worker's start-up: it leaves SIGTERM / SIGINT to the parent, which kills it, and
    ends with the parent however that ends (Linux: the kernel sends it SIGKILL)."""
    global _worker_maker
    _worker_maker = maker
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent ended before the request
        os._exit(1)


def _make_in_worker(task: tuple[int, int, list]) -> dict:
    return _worker_maker(task)


def _ordered(executor: ProcessPoolExecutor, tasks: Iterator, in_flight: int) -> Iterator:
    """Results over tasks, in order, with at most in_flight pending (the corpus is read
    as the workers go, not all at once)."""
    pending: collections.deque = collections.deque()
    for task in tasks:
        pending.append(executor.submit(_make_in_worker, task))
        if len(pending) >= in_flight:
            yield _result(pending.popleft())
    while pending:
        yield _result(pending.popleft())


def _result(future) -> dict:
    """The future's result, waited for in slices: a signal delivered to another thread of
    this process does not wake a blocked wait, the end of a slice does (and its handler
    runs)."""
    while True:
        try:
            return future.result(timeout=POLL_SECONDS)
        except FutureTimeout:
            pass


def finish(plan: Plan, stats: list[dict]) -> dict:
    """Check the counts and write meta.json (last: the folder is complete only then)."""
    opts = plan.maker.opts
    stats = sorted(stats, key=lambda s: (s["group"], s["part"]))
    total = lambda f, split=None: sum(  # noqa: E731
        (s["splits"][split][f] if split else s[f]) for s in stats)
    inputs = ", ".join(opts.input)
    n_docs, n_train, n_eval = (total("documents"), total("documents", "train"),
                               total("documents", "eval"))
    if n_train < MIN_TRAIN_DOCS:
        raise UserError(f"{inputs}: {n_docs} document(s); need at least {MIN_TRAIN_DOCS} "
                        f"documents separated by a blank line (one sentence per line)")
    if opts.eval_fraction > 0 and n_eval < MIN_EVAL_DOCS:
        raise UserError(
            f"{inputs}: the hash of each document held out {n_eval} of {n_docs} documents "
            f"(eval_fraction {opts.eval_fraction}); need at least {MIN_EVAL_DOCS}: raise "
            f"--eval-fraction (config.data.eval_fraction), add documents, or set it to 0")
    if total("records", "train") == 0:
        raise UserError(f"{inputs}: no training pairs could be made; add text")
    folder = storage.path(plan.output_dir)
    _, special, vocab_size, _ = plan.maker.context()
    files = {prepared.VOCAB: storage.describe(folder / prepared.VOCAB)}
    shards = {}
    for split_name in prepared.SPLITS:
        infos = [s["splits"][split_name] for s in stats if s["splits"][split_name]["records"]]
        shards[split_name] = [{"name": i["name"], "records": i["records"]} for i in infos]
        files.update({i["name"]: {"bytes": i["bytes"], "crc32": i["crc32"]} for i in infos})
    meta = dict(
        format_version=prepared.FORMAT_VERSION,
        fingerprint=plan.maker.fingerprint,
        vocab_size=vocab_size,
        id_dtype=records.id_dtype(vocab_size).name,
        max_seq_length=opts.max_seq_length,
        max_predictions_per_seq=opts.max_predictions_per_seq,
        num_train_examples=total("records", "train"),
        num_eval_examples=total("records", "eval"),
        num_documents=n_docs,
        num_train_documents=n_train,
        num_eval_documents=n_eval,
        num_sentences=total("sentences"),
        num_tokens=total("tokens"),
        special_ids=dataclasses.asdict(special),
        static_train_masks=not opts.dynamic_masking,
        options=plan.key,
        source_files=plan.sources,
        shards=shards,
        files=files,
    )
    return prepared.write_meta(folder, meta)


def finish_share(plan: Plan, stats: list[dict], shard_index: int, num_shards: int) -> dict:
    """Record this process's share (a share-*.json); the process that sees every share
    writes meta.json, then removes the shares (meta.json holds all they said)."""
    folder = storage.path(plan.output_dir)
    fp = plan.maker.fingerprint
    name = lambda i: f"share-{fp}-{i:05d}-of-{num_shards:05d}.json"  # noqa: E731
    tmp = folder / (name(shard_index) + ".tmp")
    tmp.write_text(json.dumps(stats))
    tmp.rename(folder / name(shard_index))
    shares = [folder / name(i) for i in range(num_shards)]
    if not all(p.exists() for p in shares):
        return {}
    try:
        every = [s for p in shares for s in json.loads(p.read_text())]
    except FileNotFoundError:  # another process finished at the same time and removed them
        return prepared.load_meta(plan.output_dir)
    meta = finish(plan, every)
    for p in shares:
        p.unlink(missing_ok=True)
    return meta


def _validate(opts: PrepareOptions) -> None:
    checks = [
        (examples.NUM_SPECIAL_IN_PAIR + 1 < opts.max_seq_length <= records.MAX_SEQ_LENGTH,
         "max_seq_length", f"> 4 and <= {records.MAX_SEQ_LENGTH}"),
        (0 <= opts.short_seq_prob <= 1, "short_seq_prob", "in [0, 1]"),
        (0 < opts.masked_lm_prob < 1, "masked_lm_prob", "in (0, 1)"),
        (opts.max_predictions_per_seq >= 1, "max_predictions_per_seq", ">= 1"),
        (opts.mask_token_prob + opts.random_token_prob <= 1,
         "mask_token_prob + random_token_prob", "<= 1"),
        (opts.dupe_factor >= 1, "dupe_factor", ">= 1"),
        (0 <= opts.eval_fraction < 1, "eval_fraction", "in [0, 1)"),
        (opts.vocab or opts.vocab_size > len(vocab_lib.SPECIAL_TOKENS), "vocab_size", "> 5"),
        (opts.shard_mb > 0, "shard_mb", "> 0"),
        (opts.vocab_sample_mb > 0, "vocab_sample_mb", "> 0"),
    ]
    for ok, field, rule in checks:
        if not ok:
            raise UserError(f"config.data.{field} must be {rule}; fix the config / flag")


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


# ---- CLI ----------------------------------------------------------------------------------
def parser(prog: str = "python -m flax_bert.data.prepare",
           description: str = __doc__.splitlines()[0]) -> argparse.ArgumentParser:
    """The options of a prepare CLI (this one and `beam_prepare`)."""
    d = PrepareOptions()
    p = argparse.ArgumentParser(prog=prog, description=description)
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
    p.add_argument("--shard-mb", type=float, default=d.shard_mb, help="MB of text per shard")
    p.add_argument("--vocab-sample-mb", type=float, default=d.vocab_sample_mb,
                   help="MB of text the vocab is trained on (the first MB of the input)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    return p


def options_from_args(args: argparse.Namespace) -> PrepareOptions:
    return PrepareOptions(
        input=tuple(args.input), input_format=args.input_format, text_column=args.text_column,
        vocab=args.vocab, vocab_size=args.vocab_size, lowercase=not args.no_lowercase,
        max_seq_length=args.max_seq_length, short_seq_prob=args.short_seq_prob,
        masked_lm_prob=args.masked_lm_prob, max_predictions_per_seq=args.max_predictions_per_seq,
        whole_word_masking=args.whole_word_masking, dynamic_masking=not args.static_masking,
        dupe_factor=args.dupe_factor, eval_fraction=args.eval_fraction, seed=args.seed,
        shard_mb=args.shard_mb, vocab_sample_mb=args.vocab_sample_mb,
        num_workers=getattr(args, "num_workers", PrepareOptions.num_workers),
    )


def summary(output: str, meta: dict) -> str:
    return (f"{output}: {meta['num_train_examples']} train / {meta['num_eval_examples']} eval "
            f"examples in {len(meta['shards']['train'])} + {len(meta['shards']['eval'])} "
            f"shards, vocab {meta['vocab_size']}, {meta['num_documents']} documents")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    p.add_argument("--num-workers", type=int, default=PrepareOptions().num_workers,
                   help="processes making shards (0 = all cores)")
    p.add_argument("--shard-index", type=int, default=0, help="this process's share (0-based)")
    p.add_argument("--num-shards", type=int, default=1,
                   help="processes sharing the work, e.g. one per machine (needs --vocab)")
    args = p.parse_args(argv)
    opts = options_from_args(args)
    if not 0 <= args.shard_index < args.num_shards:
        print("error: --shard-index must be in [0, --num-shards)", file=sys.stderr)
        return 2
    from flax_bert.training.preemption import Interrupted

    try:
        with stop_on_signals(args.output):  # also while the vocab is trained
            meta = prepare(opts, args.output, force=args.force, shard_index=args.shard_index,
                           num_shards=args.num_shards)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(e, file=sys.stderr)
        return e.exit_code
    if not meta:
        print(f"{args.output}: share {args.shard_index} of {args.num_shards} written; "
              f"the last share to finish writes meta.json")
        return 0
    print(summary(args.output, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
