"""SIGTERM / SIGINT: finish the current step, save a checkpoint, exit without a traceback."""

from __future__ import annotations

import signal
import types
from typing import Any

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """Training stopped early with a checkpoint saved; `exit_code` is for the CLI."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class PreemptionWatch:
    """Context manager that turns SIGTERM / SIGINT into a flag the loop polls each step.

    A second signal of the same kind gets the default behaviour (immediate exit), so an
    impatient Ctrl-C twice still stops a run stuck in a save. With several processes, the
    stop step is agreed through jax's preemption sync point (every process sees it at the
    same step), which needs `jax.distributed` to be initialised.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> PreemptionWatch:
        if jax.process_count() > 1:
            return self  # jax's preemption notifier owns SIGTERM across processes
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def reached(self, step: int) -> bool:
        """Whether to stop after `step` (all processes agree)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)
