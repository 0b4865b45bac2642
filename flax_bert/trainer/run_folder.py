"""A run's folder (--workdir): the names of everything in it, one writer at a time (a
lock), and clear stops when its disk fills.

`Paths` is the one place that names the files and folders of a run folder:
    config.json           the model's BertConfig (HF field names)
    vocab.txt             the WordPiece vocab the model's inputs are tokenized with
    checkpoints/          orbax train checkpoints (flax_bert.trainer.checkpoint)
    checkpoints_broken/   checkpoints that failed to restore, moved aside (never deleted)
    pretrained/           optional: imported initial weights (python -m flax_bert.hf import)
    metrics.jsonl         one JSON row per logged step and per eval
    tensorboard/          the same scalars as TensorBoard event files
    loss.png, accuracy.png  curves drawn from metrics.jsonl
    run.lock              names the process writing here
    jax_cache/            jax's compilation cache (config.train.compilation_cache_dir)
  pretraining:
    prepared/             the prepared corpus, unless config.data.prepared_dir names one
      phase1/             the same documents in phase 1's shorter examples
  fine-tuning:
    finetune.json         the class names in id order and where the model started
    books/                the book task, when built
    hf/                   the transformers export
  SQuAD (also a fine-tuning run folder):
    cloze/                the cloze task, when built (train.json, dev.json)
    predictions.json      the final eval's answers (question id -> text, "" = none)
    nbest_predictions.json  each question's best spans (text, score, probability)
    null_odds.json        v2.0: each question's null score - best span score
  GLUE (a folder of fine-tuning run folders):
    <TASK>/lr_<LR>/       one run per task and learning rate (e.g. MNLI/lr_2e-05), with
      results.json        its dev results, once finished (a rerun reads them back)
      submission/         its test predictions as GLUE's submission files
    glue_results.json     every task's dev results at its chosen learning rate, the averages
    submission/           the chosen runs' submission files, for GLUE's server

The lock is an exclusive `fcntl.flock` on `WORKDIR/run.lock`, held by the writing process
(process 0) for the whole run; the file names the holder (host, PID, start time). The
kernel drops the lock when the process ends, however it ends (`kill -9` included), so a
lock is never stale; the file itself stays (it only names the last holder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import shutil
import socket
import time
from typing import IO, Iterator

from flax_bert.errors import UserError
from flax_bert.files import replacing

CONFIG_FILE = "config.json"  # in a run folder, an export and a Hugging Face folder alike
VOCAB_FILE = "vocab.txt"  # likewise
LOCK_FILE = "run.lock"
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How tensorstore (orbax's array writer) reports ENOSPC: a ValueError with this text.
NO_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded")


@dataclasses.dataclass(frozen=True)
class Paths:
    """The paths inside the run folder `root` (see the module docstring)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.path.abspath(self.root))

    def _join(self, *names: str) -> str:
        return os.path.join(self.root, *names)

    config = property(lambda self: self._join(CONFIG_FILE))
    vocab = property(lambda self: self._join(VOCAB_FILE))
    checkpoints = property(lambda self: self._join("checkpoints"))
    broken_checkpoints = property(lambda self: self._join("checkpoints_broken"))
    pretrained = property(lambda self: self._join("pretrained"))
    metrics = property(lambda self: self._join("metrics.jsonl"))
    tensorboard = property(lambda self: self._join("tensorboard"))
    lock = property(lambda self: self._join(LOCK_FILE))
    prepared = property(lambda self: self._join("prepared"))
    finetune_run = property(lambda self: self._join("finetune.json"))
    books = property(lambda self: self._join("books"))
    export = property(lambda self: self._join("hf"))
    cloze = property(lambda self: self._join("cloze"))
    predictions = property(lambda self: self._join("predictions.json"))
    nbest_predictions = property(lambda self: self._join("nbest_predictions.json"))
    null_odds = property(lambda self: self._join("null_odds.json"))
    results = property(lambda self: self._join("results.json"))
    submission = property(lambda self: self._join("submission"))
    glue_results = property(lambda self: self._join("glue_results.json"))

    def glue_run(self, task: str, learning_rate: float) -> str:
        """The run folder of a GLUE task (its name, e.g. `STS-B`) at a learning rate."""
        return self._join(task, f"lr_{learning_rate:g}")

    def plot(self, name: str) -> str:
        """A curve's PNG (`loss`, `accuracy`)."""
        return self._join(f"{name}.png")

    def under(self, relative: str) -> str:
        """A path the config gives relative to the run folder (absolute ones as they are)."""
        return self._join(os.path.expanduser(relative))


def same_file(a: str, b: str) -> bool:
    """Whether two files hold the same bytes."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def install_vocab(vocab: str, paths: Paths) -> None:
    """Copies `vocab` to the run folder's vocab.txt; one already there must be the same
    (a model trained on other token ids is a UserError, not a silent mix)."""
    if not os.path.isfile(paths.vocab):
        with replacing(paths.vocab) as tmp:
            shutil.copyfile(vocab, tmp)
    elif not same_file(vocab, paths.vocab):
        raise UserError(f"{paths.vocab} differs from {vocab}: the run folder holds a model of "
                        f"another vocab; use its vocab or a new --workdir")


class WorkdirInUse(UserError):
    """Another live process holds the workdir's lock."""


class WorkdirLock:
    """An exclusive lock on a workdir; a context manager, reusable by every CLI that writes
    into a workdir (train.py, `flax_bert.hf import`, fine-tuning).

    `enabled=False` (processes other than 0 of a multi-host run) makes it a no-op.
    Acquiring writes nothing when the lock is held elsewhere: the lock file is opened
    without truncation and rewritten only once the lock is ours.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = Paths(workdir).lock
        self.enabled = enabled
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        if not self.enabled:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC: Python's default
        f = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = " ".join(f.read().split()) or "a process that has not written its name yet"
            f.close()
            workdir = os.path.dirname(self.path)
            raise WorkdirInUse(
                f"--workdir {workdir} is in use by another run ({holder}; lock {self.path}); "
                f"wait for that run to end or stop it, or pass another --workdir") from None
        f.truncate(0)
        f.write(f"host {socket.gethostname()} pid {os.getpid()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the only descriptor drops the flock
            self._file = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked_for_run(workdir: str) -> Iterator[None]:
    """The lock for a (possibly multi-host) jax run: process 0 takes it; all processes
    stop with WorkdirInUse when it is held elsewhere (none waits for the others)."""
    import jax
    import numpy as np

    lock = WorkdirLock(workdir, enabled=jax.process_index() == 0)
    error: WorkdirInUse | None = None
    try:
        lock.acquire()
    except WorkdirInUse as e:
        error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        busy = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if busy and error is None:
            error = WorkdirInUse(f"--workdir {os.path.abspath(workdir)} is in use by another "
                                 f"run (process 0 names it); wait for it or pass another "
                                 f"--workdir")
    if error is not None:
        raise error
    try:
        yield
    finally:
        lock.release()


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or an exception it was raised from) says the disk or quota is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return True
        if any(text in str(error) for text in NO_SPACE_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return False


class HideDiskFullTracebacks(logging.Filter):
    """Drops log records about a full disk (orbax logs each failed write of a save with
    its traceback); the CLI reports the failure itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not ((error is not None and is_disk_full(error))
                    or any(text in record.getMessage() for text in NO_SPACE_TEXTS))


def free_space(path: str) -> str:
    """'N.N MiB free' on the filesystem of `path` (or of its nearest existing parent)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB free"
