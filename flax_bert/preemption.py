"""SIGTERM / SIGINT (a preemption, Ctrl-C): a run ends within seconds, with exit code 128 +
the signal and a line saying how to resume; it loses no step it trained and leaves no
half-written file that a rerun trips on.

One `Watch` spans a run (trainer.loop.run_folder; prepare's CLI). It starts *prompt* and turns
*deferred* once the run holds something unsaved (`defer`):

  prompt    the signal ends the process at once, from a thread the signal wakes (the main
            thread may be in a compile, vocab training or a restore for a minute): nothing
            is lost, and nothing is being written that a rerun does not redo (prepare
            writes meta.json last; the run folder's files are replaced whole).
  deferred  the signal is a flag (`requested`, `reached`): the main thread saves a
            checkpoint at the end of the train call or eval batch it is in and raises
            `Interrupted`; a save, a final save or the final exports finish first.

A second signal ends the process at once, unsaved. With several processes jax's preemption
notifier owns SIGTERM: no handler is installed and the train loop stops at the step the
processes agree on (`reached`).

Worker processes (prepare's pool, grain's) leave SIGTERM / SIGINT to the main process and
end with it however it ends (`follow_parent`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any, Iterable, Iterator, NoReturn

from flax_bert.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)
PARENT_POLL_S = 0.1  # how often a worker checks that its parent still runs
FLUSH_S = 1.0  # a prompt exit waits this long at most for its tidying (flushes)
RESUME = "rerun the same command to resume"
NOTHING_UNSAVED = "interrupted ({signal}) with nothing unsaved; " + RESUME

_active: Watch | None = None  # the watch installed in this process (signals are per process)


class StopRequested(Exception):
    """Raised into an eval between its batches once a signal came (`Watch.stoppable`)."""


class Watch:
    """SIGTERM / SIGINT handling for one run (see the module docstring). `message`: what a
    prompt exit prints ({signal} is the signal's name); `processes`: the run's process
    count (more than one: jax handles the signals)."""

    def __init__(self, message: str = NOTHING_UNSAVED, processes: int = 1):
        self.message, self.processes = message, processes
        self.signum: int | None = None
        self._deferred = False
        self._lock = threading.Lock()
        self._previous: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._wakeup_fd = -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        global _active
        _active = self
        if self.processes > 1 or threading.current_thread() is not threading.main_thread():
            return self  # jax's preemption notifier (or the main thread's watch) owns them
        read, write = self._pipe = os.pipe()
        os.set_blocking(write, False)
        # The C-level handler writes the signal number here at once, in whatever thread the
        # signal lands; Python-level handlers run only when the main thread runs bytecode.
        self._wakeup_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, lambda *_: None)
        self._thread = threading.Thread(target=self._watch, name="preemption-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active
        _active = None
        if self._pipe is None:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._wakeup_fd)
        os.write(self._pipe[1], b"\0")  # ends the thread
        self._thread.join()
        for fd in self._pipe:
            os.close(fd)
        self._pipe = None

    def _watch(self) -> None:
        while True:
            for signum in os.read(self._pipe[0], 64):
                if signum == 0:
                    return
                if signum in SIGNALS:
                    self._signalled(signum)

    def _signalled(self, signum: int) -> None:
        with self._lock:  # `defer` waits: a prompt exit is never half-way when it returns
            if self.signum is not None:
                exit_now(f"second {_name(signum)}: exiting without saving", 128 + signum)
            self.signum = signum
            if not self._deferred:
                exit_now(self.message.format(signal=_name(signum)), 128 + signum)

    def defer(self) -> None:
        """From now on a signal waits for the main thread (it holds unsaved work)."""
        with self._lock:
            self._deferred = True

    @contextlib.contextmanager
    def saying(self, message: str) -> Iterator[None]:
        """`message` is what a prompt exit prints within the block."""
        previous, self.message = self.message, message
        try:
            yield
        finally:
            self.message = previous

    @property
    def requested(self) -> bool:
        """Whether a signal came (one process: a stop mid-eval is not agreed across many)."""
        return self.signum is not None

    def reached(self, step: int) -> bool:
        """Whether to stop after `step` (all processes agree)."""
        if self.processes > 1:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def stoppable(self, batches: Iterable) -> Iterator:
        """`batches`, raising StopRequested before the next one once a signal came."""
        for batch in batches:
            if self.requested:
                raise StopRequested
            yield batch

    def interrupted(self, message: str) -> Interrupted:
        """The exception ending the run after a signal, with `message` (how to resume)."""
        return Interrupted(f"interrupted ({_name(self.signum)}) {message}",
                           128 + (self.signum or signal.SIGTERM))


def current() -> Watch:
    """The watch of the run in progress (none: one that never sees a signal)."""
    return _active if _active is not None else Watch()


def saying(message: str) -> contextlib.AbstractContextManager:
    """`Watch.saying` of the watch installed in this process (none: nothing)."""
    return _active.saying(message) if _active is not None else contextlib.nullcontext()


def _name(signum: int | None) -> str:
    return signal.Signals(signum or signal.SIGTERM).name


def exit_now(message: str, code: int) -> NoReturn:
    """Ends the process from any thread, waiting for no other thread (a background compile,
    orbax's, grain's): stdout and stderr flushed, worker processes killed, multiprocessing's
    named semaphores unlinked (as a normal exit does), its resource tracker stopped (it
    frees the shared memory the killed workers held and warns about it: before `message`,
    not after), all if they can be within FLUSH_S; `message` on stderr as one line; exit
    `code`."""
    def tidy() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if "multiprocessing.util" in sys.modules:
            for child in sys.modules["multiprocessing"].active_children():
                child.kill()  # first: a pool's finalizer would wait for its workers
            sys.modules["multiprocessing.util"]._run_finalizers(0)
        if "multiprocessing.resource_tracker" in sys.modules:
            sys.modules["multiprocessing.resource_tracker"]._resource_tracker._stop()

    thread = threading.Thread(target=tidy, daemon=True)
    thread.start()
    thread.join(FLUSH_S)
    os.write(2, f"{chr(10) if sys.stderr.isatty() else ''}{message}\n".encode())
    os._exit(code)


def follow_parent(parent: int, *_: Any) -> None:
    """A worker's start-up (prepare's pool; grain's `worker_init_fn`, whose arguments it
    ignores): SIGTERM / SIGINT are left to the main process `parent`, and the worker ends
    when `parent` has ended, however it ended (a thread checks every PARENT_POLL_S)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()
