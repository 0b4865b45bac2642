"""Fuzzing prepared data: seeded corruptions of a prepared folder, each of which must be
caught before its bytes reach a batch.

    python -m tools.fuzz_prepared --cases 200 --seed 0 [--cli-per-outcome 1]

Two prepares of a small corpus with several shards: A, and B (another seed and a smaller
vocab, so another fingerprint; ArrayRecord pads shards to whole blocks, so B's shards have
A's sizes). Each case corrupts a fresh copy of A in one way (KINDS): bytes flipped (1-8),
a file truncated, bytes appended or a file deleted (any file: every shard, meta.json,
vocab.txt), a shard of B copied over one of A's under A's name, two of A's shards swapped,
B's meta.json or vocab.txt over A's. The first cases take each kind once, on each kind of
file where it picks one; the others are drawn by WEIGHTS. The copy is then read through
the public API (`pipeline.load_meta`, a train iterator's batch of every train example,
every eval batch), in a worker process: a crash or a hang is recorded, not suffered.
Outcomes: the one-line UserError's kind (meta checksum, size mismatch, shard checksum,
...), "no effect" (no error, and the batches equal the intact folder's bit for bit: e.g. a
newline appended to meta.json), or a failure: SILENT WRONG BATCH (no error, other
batches), a traceback (any other exception), a crash or a hang. An error must be one line
that names the folder's file it found wrong and says the fix. With --cli-per-outcome K, K
cases of each kind, outcome and file kind (meta.json, vocab.txt, a shard) also run
`train.py --config.data.prepared_dir=COPY` as a user would: one `error:` line and exit 2
(exit 0 for "no effect"), no traceback.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import traceback
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KINDS = ("flip", "truncate", "append", "delete", "swap-shard", "own-swap", "foreign-meta",
         "foreign-vocab")
WEIGHTS = (4, 2, 1, 1, 2, 1, 1, 1)  # byte flips are the commonest damage
FAILURES = ("SILENT WRONG BATCH", "traceback", "crash", "hang")
META, VOCAB = "meta.json", "vocab.txt"
# The first cases: each kind once, on each file kind where the kind picks a file.
FIRST = [(kind, fk) for kind in KINDS[:4] for fk in (META, VOCAB, "shard")] + [
    (kind, None) for kind in KINDS[4:]]
CASE_TIMEOUT_S = 120.0
# What each UserError says (its kind), by a phrase of its message; first match wins.
ERROR_KINDS = (("its checksum does not match", "meta checksum"),
               ("another prepare's (fingerprint", "meta of another prepare"),
               ("prepared by an older version", "meta: says 'older version'"),
               (": not found; run", "meta missing"),
               (": missing;", "file missing"),
               ("bytes, meta.json says", "size mismatch"),
               ("altered (its checksum differs", "checksum"),
               ("format ", "format version"))


def options(folder_corpus: str, **overrides):
    """Prepare options of the fuzzed folders (several shards of a marker corpus)."""
    from flax_bert.data.config import DataOptions

    base = dict(input=(folder_corpus,), vocab_size=4000, max_seq_length=64,
                max_predictions_per_seq=10, eval_fraction=0.2, num_workers=1, dupe_factor=2,
                shard_mb=0.01)
    return DataOptions().replace(**{**base, **overrides})


def make_folders(root: str) -> tuple[str, str, Any]:
    """Prepares A and B under root; returns their paths and A's options."""
    from flax_bert.data import prepare
    from tools.corpora import marker_corpus

    corpus = os.path.join(root, "corpus.txt")
    marker_corpus(corpus)
    a, b = os.path.join(root, "A"), os.path.join(root, "B")
    opts = options(corpus)
    prepare.prepare(opts, a, progress=False)
    prepare.prepare(options(corpus, prepare_seed=1, vocab_size=300), b, progress=False)
    return a, b, opts


def file_kind_of(name: str) -> str:
    return name if name in (META, VOCAB) else "shard"


def corrupt(folder: str, other: str, kind: str, rng: random.Random,
            file_kind: str | None = None) -> dict[str, Any]:
    """Applies one corruption of `kind` to `folder` (`other`: prepare B), to a file of
    `file_kind` when given (flip, truncate, append, delete); returns what was done: the
    files of `folder` it made wrong (the first names the case), and how."""
    files = sorted(os.listdir(folder))
    shards = [n for n in files if n.endswith(".arrayrecord")]
    theirs = sorted(n for n in os.listdir(other) if n.endswith(".arrayrecord"))
    name = rng.choice([n for n in files if file_kind in (None, file_kind_of(n))])
    path = os.path.join(folder, name)
    if kind == "flip":
        data = bytearray(open(path, "rb").read())
        offsets = sorted(rng.sample(range(len(data)), min(len(data), rng.randint(1, 8))))
        for i in offsets:
            data[i] ^= rng.randint(1, 255)
        open(path, "wb").write(bytes(data))
        return dict(files=[name], how=f"{len(offsets)} byte(s) flipped at {offsets[:3]}...")
    if kind == "truncate":
        size = rng.randrange(os.path.getsize(path))
        os.truncate(path, size)
        return dict(files=[name], how=f"cut to {size} bytes")
    if kind == "append":
        extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        with open(path, "ab") as f:
            f.write(extra)
        return dict(files=[name], how=f"{len(extra)} bytes appended")
    if kind == "delete":
        os.remove(path)
        return dict(files=[name], how="deleted")
    if kind == "swap-shard":
        name, source = rng.choice(shards), rng.choice(theirs)
        shutil.copyfile(os.path.join(other, source), os.path.join(folder, name))
        return dict(files=[name], how=f"B's {source} over it")
    if kind == "own-swap":
        name, second = rng.sample(shards, 2)
        p, q = os.path.join(folder, name), os.path.join(folder, second)
        os.rename(p, p + ".tmp")
        os.rename(q, p)
        os.rename(p + ".tmp", q)
        return dict(files=[name, second], how=f"swapped with {second}")
    name = META if kind == "foreign-meta" else VOCAB
    shutil.copyfile(os.path.join(other, name), os.path.join(folder, name))
    return dict(files=[name], how="B's over it")


def read_all(folder: str, opts: Any, num_train: int) -> dict[str, Any]:
    """Everything a run could read: a batch of `num_train` train examples (one epoch of
    the intact folder), every eval batch."""
    from flax_bert.data import pipeline

    pipeline.load_meta(folder)
    train = pipeline.make_train_iterator(folder, opts, global_batch_size=num_train, seed=0,
                                         process_index=0, process_count=1)
    evals = pipeline.make_eval_iterator(folder, opts, global_batch_size=8, process_index=0,
                                        process_count=1)
    return {"train": next(train), "eval": list(evals)}


def same_batches(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import jax
    import numpy as np

    return (jax.tree.structure(a) == jax.tree.structure(b)
            and all(np.shape(x) == np.shape(y) and np.array_equal(x, y)
                    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


_intact: dict[str, Any] = {}


def check(folder: str, intact: str, opts: Any, files: list[str]) -> dict[str, Any]:
    """The outcome of reading a corrupted copy (in a worker: see `Checker`)."""
    from flax_bert.data import pipeline
    from flax_bert.errors import UserError

    if intact not in _intact:
        num_train = pipeline.load_meta(intact)["num_train_examples"]
        _intact[intact] = (num_train, read_all(intact, opts, num_train))
    num_train, want = _intact[intact]
    try:
        got = read_all(folder, opts, num_train)
    except UserError as e:
        message = str(e)
        kind = next((k for phrase, k in ERROR_KINDS if phrase in message), "other UserError")
        if kind == "checksum":
            kind = f"{'vocab' if VOCAB in message else 'shard'} checksum"
        problems = []
        if "\n" in message:
            problems.append("more than one line")
        if not any(os.path.join(folder, file) in message for file in files):
            problems.append("names another file")
        if not any(fix in message for fix in ("re-run prepare", "python -m flax_bert.data.prepare")):
            problems.append("no fix")
        return dict(outcome=kind, message=message, problems=problems)
    except Exception as e:  # noqa: BLE001  (any other exception is what we look for)
        return dict(outcome="traceback", message=f"{type(e).__name__}: {e}"[:300],
                    problems=["traceback"], trace=traceback.format_exc()[-1500:])
    if same_batches(got, want):
        return dict(outcome="no effect", message="", problems=[])
    return dict(outcome="SILENT WRONG BATCH", message="", problems=["silent wrong batch"])


class Checker:
    """Runs `check` in one worker process, restarted after a crash or a hang."""

    def __init__(self):
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __call__(self, *args: Any) -> dict[str, Any]:
        if self.pool is None:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"))
        future = self.pool.submit(check, *args)
        try:
            return future.result(CASE_TIMEOUT_S)
        except concurrent.futures.process.BrokenProcessPool:
            outcome = "crash"
        except concurrent.futures.TimeoutError:
            outcome = "hang"
        self.close()
        return dict(outcome=outcome, message="", problems=[outcome])

    def close(self) -> None:
        if self.pool is not None:
            for process in list(self.pool._processes.values()):  # a hung one too
                process.kill()
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def fuzz(root: str, cases: int, seed: int, keep_per_outcome: int = 0, log=print
         ) -> tuple[list[dict[str, Any]], str, Any]:
    """`cases` seeded corruptions of prepare A under `root`, each checked; the first
    `keep_per_outcome` copies of each (kind, outcome, file kind) are kept for `cli`. Returns the
    cases, A's folder and its options."""
    a, b, opts = make_folders(root)
    rng = random.Random(seed)
    checker = Checker()
    results, kept = [], collections.Counter()
    try:
        for i in range(cases):
            kind, file_kind = (FIRST[i] if i < len(FIRST)
                               else (rng.choices(KINDS, WEIGHTS)[0], None))
            copy = os.path.join(root, f"case{i:04d}")
            shutil.copytree(a, copy)
            case = dict(case=i, kind=kind, folder=copy,
                        **corrupt(copy, b, kind, rng, file_kind))
            case.update(checker(copy, a, opts, case["files"]))
            results.append(case)
            if case["problems"]:
                log(f"case {i} {kind} {case['files'][0]} ({case['how']}): {case['outcome']}: "
                    f"{case['problems']} {case['message'][:200]}")
            key = kind, case["outcome"], file_kind_of(case["files"][0])
            if kept[key] < keep_per_outcome:
                kept[key] += 1
            else:
                shutil.rmtree(copy)
                case["folder"] = None
    finally:
        checker.close()
    return results, a, opts


def cli(case: dict[str, Any], opts: Any, workdir: str, env: dict[str, str]
        ) -> tuple[list[str], list[str]]:
    """train.py on the case's folder, as a user would: (what it did wrong, notes)."""
    p = subprocess.run(
        [sys.executable, "train.py", "--workdir", workdir,
         f"--config.data.prepared_dir={case['folder']}",
         "--config.model.num_hidden_layers=1", "--config.model.hidden_size=16",
         "--config.model.num_attention_heads=1", "--config.model.intermediate_size=16",
         f"--config.data.max_seq_length={opts.max_seq_length}",
         f"--config.data.max_predictions_per_seq={opts.max_predictions_per_seq}",
         "--config.train.phase1_fraction=0", "--config.train.global_batch_size=8",
         "--config.train.steps=2", "--config.train.steps_per_call=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    want = 0 if case["outcome"] == "no effect" else 2
    problems, notes = [], []
    if p.returncode != want:
        problems.append(f"exit {p.returncode}, not {want}")
    if len(errors) != (want == 2):
        problems.append(f"{len(errors)} error: lines")
    if "Traceback" in p.stderr:
        tail = " | ".join(p.stderr.strip().splitlines()[-2:])
        problems.append(f"a traceback: {tail[:300]}")
    elif errors and case["message"] and case["message"] not in errors[0]:
        notes.append(f"(not the API's error: {errors[0][:160]})")
    return problems, notes


def table(results: list[dict[str, Any]]) -> str:
    """Cases by corruption kind x outcome."""
    outcomes = sorted({r["outcome"] for r in results}, key=lambda o: (o in FAILURES, o))
    lines = [f"{'kind':<14}" + "".join(f"{o:>{len(o) + 2}}" for o in outcomes) + "  total"]
    for kind in KINDS:
        mine = [r for r in results if r["kind"] == kind]
        counts = collections.Counter(r["outcome"] for r in mine)
        lines.append(f"{kind:<14}" + "".join(f"{counts[o] or '.':>{len(o) + 2}}" for o in outcomes)
                     + f"{len(mine):>7}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cli-per-outcome", type=int, default=1,
                   help="train.py runs per kind x outcome x file kind (0: none)")
    p.add_argument("--root", default="", help="working folder (default: a temp dir)")
    a = p.parse_args()
    root = a.root or tempfile.mkdtemp(prefix="fuzz_prepared_")
    os.makedirs(root, exist_ok=True)
    results, _, opts = fuzz(root, a.cases, a.seed, a.cli_per_outcome)
    print(f"{len(results)} cases (seed {a.seed}), by corruption kind x outcome:")
    print(table(results))
    notes = collections.Counter((r["kind"], p) for r in results for p in r["problems"])
    print("problems: " + (", ".join(f"{k} {p}: {n}" for (k, p), n in sorted(notes.items()))
                          or "none"))
    if a.cli_per_outcome:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=os.path.join(root, "jax_cache"),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        sampled = [r for r in results if r["folder"]]
        print(f"train.py on {len(sampled)} of them (--cli-per-outcome {a.cli_per_outcome}):")
        for r in sampled:
            problems, notes = cli(r, opts, os.path.join(root, f"w{r['case']:04d}"), env)
            print(f"  case {r['case']:>4} {r['kind']:<14} {r['files'][0][:40]:<40} "
                  f"{r['outcome']:<24}" + "; ".join(problems or ["ok"] + notes))


if __name__ == "__main__":
    main()
