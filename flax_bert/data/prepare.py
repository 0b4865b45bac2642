"""Prepare step: corpus -> WordPiece vocab -> shards of tokenized NSP pairs (+ held-out split).

    python -m flax_bert.data.prepare --config configs/base.py --input 'wiki/*.txt' \
        --output /data/prepared [--config.data.FIELD=V ...] [--config.train.FIELD=V ...]
    python -m flax_bert.data.prepare --input corpus/*.txt.gz --output /tmp/prepared \
        [--vocab-size 8192 | --vocab vocab.txt] --max-seq-length 128 [--phase1-seq-length 32] \
        [--shard-index I --num-shards N]   # one process per machine, each a share

With --config (the run's config file and its --config.* overrides, as train.py takes
them) it writes every phase a run of that config trains (`run_folders`): OUTPUT holds the
config.data.max_seq_length examples and, when config.train trains a phase 1, OUTPUT/phase1
the same documents in config.train.phase1_seq_length-token examples with OUTPUT's vocab;
train.py with --config.data.prepared_dir=OUTPUT and the same config reads them. Without
--config, the flags named after config.data's fields (--max-seq-length, ...; DataOptions'
defaults) describe OUTPUT, and --phase1-seq-length N adds OUTPUT/phase1.

Streaming and sharded: the input files are grouped (consecutive files up to `shard_mb` on
disk; a `datasets` folder alone), each group is read as a stream and cut into shards of
about `shard_mb` MB of text, and each shard is tokenized, paired (random next segments drawn
within the shard, as google-research/bert does per input file), masked when static and
written on its own, in a worker process. Memory is bounded by the shard size; the output
depends on the options and the inputs, never on the number of workers or machines. The
held-out split is whole documents chosen by a hash of each document (`split.py`), so any
shard decides alone. A shard's work is `shards.ShardMaker`; the same per-shard functions run
as a Beam pipeline (`beam_prepare.py`). The folder's layout and its integrity checks:
`folder.py`; the record format: `records.py`. `prepare` is a no-op when meta.json exists
with the same options and inputs. The options are `config.data` (`config.DataOptions`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from flax_bert import config_ranges, files, preemption, run_config
from flax_bert.data import corpus, folder as folder_lib, records, storage
from flax_bert.data import vocab as vocab_lib
from flax_bert.data.config import DataOptions, add_flags, from_flags, phase1_steps
from flax_bert.data.shards import MB, ShardMaker, doc_chars, group_shards, plan_groups
from flax_bert.errors import UserError

IN_FLIGHT_PER_WORKER = 2  # Shards queued per worker (bounds the reader's memory).
MIN_TRAIN_DOCS = 2  # NSP needs a document other than A's.
MIN_EVAL_DOCS = 2


def _source_files(opts: DataOptions) -> list[dict]:
    paths = corpus.expand_inputs(list(opts.input))
    return [{"path": _abspath(p), "bytes": _size(p)} for p in paths]


def _abspath(p: str) -> str:
    return p if "://" in p else os.path.abspath(p)


def _size(path: str) -> int:
    p = storage.path(path)
    if p.is_dir():  # a `datasets` folder
        return sum((d / f).stat().length for d, _, files in p.walk() for f in files)
    return p.stat().length


def cache_key(opts: DataOptions, sources: list[dict]) -> tuple[dict, str]:
    """(meta.json's "options", the fingerprint in shard names) of options and inputs."""
    key = opts.prepared_key()
    key["vocab_crc32"] = storage.crc32(storage.path(opts.vocab)) if opts.vocab else 0
    key["format_version"] = folder_lib.FORMAT_VERSION
    blob = json.dumps({"options": key, "sources": sources}, sort_keys=True).encode()
    return key, hashlib.sha256(blob).hexdigest()[:8]


# ---- The whole prepare ------------------------------------------------------------------
def run_folders(opts: DataOptions, output_dir: str,
                phase1_seq_length: int = 0) -> list[tuple[DataOptions, str]]:
    """What a run needs prepared, in order: (options, folder) of the main data and, with
    `phase1_seq_length`, of phase 1's (`options.for_phase1`, in `folder.phase1_folder`,
    tokenized with the main folder's vocab)."""
    folders = [(opts, output_dir)]
    if phase1_seq_length:
        vocab = os.path.join(output_dir, folder_lib.VOCAB)
        folders.append((opts.for_phase1(phase1_seq_length, vocab),
                        folder_lib.phase1_folder(output_dir)))
    return folders


def prepare(
    opts: DataOptions, output_dir: str, *, force: bool = False, progress: bool = True,
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


def start(opts: DataOptions, output_dir: str, *, force: bool = False,
          shard_parallel: bool = False) -> Plan:
    """Check the folder, write the vocab, plan the groups (or find the cached meta)."""
    sources = _source_files(opts)
    key, fingerprint = cache_key(opts, sources)
    folder = storage.path(output_dir)
    old = folder_lib.read_meta(folder) if folder.exists() else None
    if old is not None and old.get("fingerprint") == fingerprint and not force:
        return Plan(folder_lib.load_meta(output_dir), key, sources, [], None, output_dir)
    opts.check()
    _claim(folder, fingerprint, old, force)
    vocab_path = str(folder / folder_lib.VOCAB)
    if opts.vocab:
        vocab_lib.read_vocab(opts.vocab)
        if _abspath(opts.vocab) != _abspath(vocab_path):
            storage.path(opts.vocab).copy(folder / folder_lib.VOCAB, overwrite=True)
    else:
        if shard_parallel:
            raise UserError("--num-shards > 1 needs --vocab (a vocab.txt every process shares); "
                            "train one first with a single prepare")
        with tempfile.TemporaryDirectory() as tmp:  # trained locally, then copied
            paths = [s["path"] for s in sources]
            trained = vocab_lib.train_vocab(lambda: _vocab_sample(opts, paths),
                                            opts.vocab_size, opts.lowercase, tmp)
            storage.path(trained).copy(folder / folder_lib.VOCAB, overwrite=True)
    maker = ShardMaker(opts, output_dir, fingerprint, vocab_path)
    return Plan(None, key, sources, plan_groups(sources, opts.shard_mb * MB), maker, output_dir)


def _vocab_sample(opts: DataOptions, paths: list[str]) -> Iterator[str]:
    """Sentences of the first opts.vocab_sample_mb MB of text (vocab training streams)."""
    chars = 0
    for _, doc in corpus.iter_raw_documents(paths, opts.input_format, opts.text_column):
        sentences = corpus.to_sentences(doc, opts.input_format)
        yield from sentences
        chars += doc_chars(sentences)
        if chars >= opts.vocab_sample_mb * MB:
            return


def _claim(folder, fingerprint: str, old: dict | None, force: bool) -> None:
    """Make the folder ours: another prepare's meta.json or shards are an error, or with
    --force removed. Shards of this fingerprint (a run cut short) are overwritten."""
    foreign = [p for p in folder.iterdir() if folder_lib.is_shard(p.name)
               and folder_lib.fingerprint_of(p.name) != fingerprint] if folder.exists() else []
    if old is not None or foreign:
        if not force:
            what = folder / folder_lib.META if old is not None else foreign[0]
            raise UserError(
                f"{what}: the folder holds another prepare's data (other options or inputs); "
                f"choose another --output (config.data.prepared_dir), delete {folder}, or "
                f"pass --force to replace it")
        (folder / folder_lib.META).unlink(missing_ok=True)
        for p in foreign:
            p.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def _run_local(maker: ShardMaker, groups: list[tuple[int, list[str]]], opts: DataOptions,
               progress: bool) -> Iterator[dict]:
    """Stats of every shard of the groups, made in worker processes (one shard each)."""
    tasks = ((g, part, docs) for g, paths in groups
             for part, docs in enumerate(group_shards(paths, opts)))
    workers = opts.num_workers or os.cpu_count() or 1
    # spawn, not fork: the caller (train.py) may already run JAX threads. An executor (not a
    # Pool) so a worker that dies raises instead of hanging.
    executor = None if workers == 1 else ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
        initargs=(maker, os.getpid()))
    results: Iterable = (map(maker, tasks) if executor is None
                         else _ordered(executor, tasks, IN_FLIGHT_PER_WORKER * workers))
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
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)


_worker_maker: ShardMaker | None = None


def _init_worker(maker: ShardMaker, parent: int) -> None:
    global _worker_maker
    _worker_maker = maker
    preemption.follow_parent(parent)  # the worker ends with `parent`, however that ends


def _make_in_worker(task: tuple[int, int, list]) -> dict:
    return _worker_maker(task)


def _ordered(executor: ProcessPoolExecutor, tasks: Iterator, in_flight: int) -> Iterator:
    """Results over tasks, in order, with at most in_flight pending (the corpus is read
    as the workers go, not all at once)."""
    pending: collections.deque = collections.deque()
    for task in tasks:
        pending.append(executor.submit(_make_in_worker, task))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


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
    files = {folder_lib.VOCAB: storage.describe(folder / folder_lib.VOCAB)}
    shards = {}
    for split_name in folder_lib.SPLITS:
        infos = [s["splits"][split_name] for s in stats if s["splits"][split_name]["records"]]
        shards[split_name] = [{"name": i["name"], "records": i["records"]} for i in infos]
        files.update({i["name"]: {"bytes": i["bytes"], "crc32": i["crc32"]} for i in infos})
    sizes = {}  # each split's rows (= records), pairs and real tokens / (rows * L)
    for name in folder_lib.SPLITS:
        rows, tokens = total("records", name), total("real_tokens", name)
        sizes.update({f"num_{name}_rows": rows, f"num_{name}_pairs": total("pairs", name),
                      f"{name}_real_token_fraction": tokens / max(rows * opts.max_seq_length, 1)})
    meta = dict(
        format_version=folder_lib.FORMAT_VERSION,
        fingerprint=plan.maker.fingerprint,
        vocab_size=vocab_size,
        id_dtype=records.id_dtype(vocab_size).name,
        max_seq_length=opts.max_seq_length,
        max_predictions_per_seq=opts.max_predictions_per_seq,
        num_train_examples=total("records", "train"),
        num_eval_examples=total("records", "eval"),
        packed=opts.packing,
        max_pairs_per_row=opts.max_pairs_per_row if opts.packing else 1,
        **sizes,
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
    return folder_lib.write_meta(folder, meta)


def finish_share(plan: Plan, stats: list[dict], shard_index: int, num_shards: int) -> dict:
    """Record this process's share (a share-*.json); the process that sees every share
    writes meta.json, then removes the shares (meta.json holds all they said)."""
    folder = storage.path(plan.output_dir)
    fp = plan.maker.fingerprint
    name = lambda i: f"share-{fp}-{i:05d}-of-{num_shards:05d}.json"  # noqa: E731
    files.write_json(folder / name(shard_index), stats)
    shares = [folder / name(i) for i in range(num_shards)]
    if not all(p.exists() for p in shares):
        return {}
    try:
        every = [s for p in shares for s in json.loads(p.read_text())]
    except FileNotFoundError:  # another process finished at the same time and removed them
        return folder_lib.load_meta(plan.output_dir)
    meta = finish(plan, every)
    for p in shares:
        p.unlink(missing_ok=True)
    return meta


# ---- CLI ----------------------------------------------------------------------------------
def parser(prog: str = "python -m flax_bert.data.prepare",
           description: str = __doc__.splitlines()[0]) -> argparse.ArgumentParser:
    """The options of a prepare CLI (this one and `beam_prepare`): --output, --force and the
    flags of config.data's fields (options.add_flags)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--output", required=True, help="prepared folder to write")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    add_flags(p)
    return p


def summary(output: str, meta: dict) -> str:
    return (f"{output}: {meta['num_train_examples']} train / {meta['num_eval_examples']} eval "
            f"{'rows' if meta.get('packed') else 'examples'} in {len(meta['shards']['train'])} "
            f"+ {len(meta['shards']['eval'])} shards, vocab {meta['vocab_size']}, "
            f"{meta['num_documents']} documents" + (
                f"; {meta['num_train_pairs']} train pairs, "
                f"{meta['train_real_token_fraction']:.1%} real tokens" if "num_train_pairs" in meta
                else ""))


def _data_flags_given(rest: list[str]) -> list[str]:
    """The config.data fields set by their own flags (--max-seq-length, --no-packing, ...)."""
    names = {}
    for field in dataclasses.fields(DataOptions):
        flag = field.name.replace("_", "-")
        names.update({f"--{flag}": field.name, f"--no-{flag}": field.name})
    given = [names[a.split("=", 1)[0]] for a in rest if a.split("=", 1)[0] in names]
    return [name for name in dict.fromkeys(given) if name not in ("input", "num_workers")]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config_args, rest = run_config.split_args(argv)
    p = parser()
    p.add_argument("--config", help="the run's config file: every phase it trains; "
                   "--config.data.FIELD=V / --config.train.FIELD=V override its fields")
    p.add_argument("--phase1-seq-length", type=int, default=0,
                   help="without --config: also OUTPUT/phase1, the same documents in "
                        "examples of this many tokens (0: none)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="processes making shards (0 = all cores; default: config.data's)")
    p.add_argument("--shard-index", type=int, default=0, help="this process's share (0-based)")
    p.add_argument("--num-shards", type=int, default=1,
                   help="processes sharing the work, e.g. one per machine (needs --vocab)")
    args = p.parse_args(rest)
    if not 0 <= args.shard_index < args.num_shards:
        print("error: --shard-index must be in [0, --num-shards)", file=sys.stderr)
        return 2
    try:
        given = _data_flags_given(rest)
        if config_args:
            if given or args.phase1_seq_length:
                flag = f"--{given[0].replace('_', '-')}" if given else "--phase1-seq-length"
                field = f"data.{given[0]}" if given else "train.phase1_seq_length"
                raise UserError(f"{flag} with --config: set --config.{field}=... instead "
                                f"(the folder is the config's)")
            config = run_config.load(config_args, "python -m flax_bert.data.prepare")
            config_ranges.check(config)  # the run's config: every range, before preparing
            opts = DataOptions.from_config(config.data).replace(input=tuple(args.input))
            phase1_length = (config.train.phase1_seq_length
                             if phase1_steps(config.train, opts.max_seq_length) else 0)
        else:
            opts = from_flags(args)
            phase1_length = args.phase1_seq_length
            if phase1_length and not 0 < phase1_length < opts.max_seq_length:
                raise UserError(f"--phase1-seq-length {phase1_length} must be shorter than "
                                f"--max-seq-length ({opts.max_seq_length})")
        if args.num_workers is not None:
            opts = opts.replace(num_workers=args.num_workers)
        folders = run_folders(opts, args.output, phase1_length)
        metas = []
        with preemption.Watch(folder_lib.interrupted(args.output)):  # a signal: exit at once
            for folder_opts, folder in folders:
                metas.append(prepare(folder_opts, folder, force=args.force,
                                     shard_index=args.shard_index,
                                     num_shards=args.num_shards))
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for (_, folder), meta in zip(folders, metas):
        if not meta:
            print(f"{folder}: share {args.shard_index} of {args.num_shards} written; "
                  f"the last share to finish writes meta.json")
        else:
            print(summary(folder, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
