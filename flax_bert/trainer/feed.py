"""The device feed: host batches -> global arrays on the mesh, K steps' batches per train
call, the next call's input in flight while the current call runs."""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from flax_bert.trainer import sharding


def global_batch(local: dict[str, np.ndarray], mesh: Mesh,
                 stacked: bool = False) -> dict[str, jax.Array]:
    """This process's rows -> global arrays split over the mesh's data x fsdp axes.
    `stacked`: the arrays are [steps, rows, ...] (see steps.train_steps)."""
    spec = sharding.batch_sharding(mesh, stacked)
    return {k: jax.make_array_from_process_local_data(spec, v) for k, v in local.items()}


def stack_batches(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """K batches -> one of [K, rows, ...] arrays."""
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def call_sizes(start: int, total: int, steps_per_call: int, every: Iterable[int],
               at: Iterable[int]) -> Iterator[int]:
    """Steps per train call from step `start` to `total`: `steps_per_call`, cut short so
    that a call ends at each multiple of the intervals in `every` (logs, evals,
    checkpoints) and at each step in `at` (phase switch, stop): the loop acts only between
    calls. Intervals that are multiples of `steps_per_call` need no shorter call (each
    distinct call size compiles once)."""
    done = start
    while done < total:
        ends = [total] + [(done // n + 1) * n for n in every if n > 0]
        ends += [step for step in at if step > done]
        size = min(steps_per_call, min(ends) - done)
        yield size
        done += size


class DeviceFeed:
    """The train calls' stacked batches ([K, rows, ...] per call) on the devices, in order.

    `prefetch`, called right after a call is dispatched, builds the next call's batches and
    starts their transfer while that call runs (double buffering: the input of a call is
    on its way before the host blocks on a log row, an eval or a save).
    As the checkpoint's data item, it saves the data position after the calls handed out,
    not after the one prefetched.
    """

    def __init__(self, data_iter: Any, sizes: Iterable[int], mesh: Mesh):
        self.data_iter, self.mesh = data_iter, mesh
        self._sizes = iter(sizes)
        self._next: tuple[int, dict[str, jax.Array]] | None = None
        self._position: Any = None  # data_iter's state before the prefetched call

    def __iter__(self) -> DeviceFeed:
        return self

    def __next__(self) -> tuple[int, dict[str, jax.Array]]:
        """(K, the call's [K, rows, ...] global arrays)."""
        self.prefetch()
        if self._next is None:
            raise StopIteration
        call, self._next = self._next, None
        return call

    def prefetch(self) -> None:
        """Builds and puts the next call's batches (a no-op if done or already there)."""
        if self._next is not None or (size := next(self._sizes, None)) is None:
            return
        self._position = self.data_iter.get_state()
        local = stack_batches([next(self.data_iter) for _ in range(size)])
        self._next = (size, global_batch(local, self.mesh, stacked=True))

    def get_state(self) -> bytes:
        """The data position after the calls handed out, as grain's checkpoint stores it."""
        position = self._position if self._next is not None else self.data_iter.get_state()
        return json.dumps(position, indent=4).encode()
