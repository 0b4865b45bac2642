"""What a run reports while it trains: metric rows, held-out evaluations, the guard against
non-finite steps, the progress bar and messages (process 0 prints)."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from flax_bert.trainer import checkpoint
from flax_bert import distributed, preemption
from flax_bert.errors import UserError
from flax_bert.trainer import metric_log as metrics_lib
from flax_bert.trainer.feed import global_batch


def say(message: str) -> None:
    """Prints a line above the progress bar (process 0)."""
    if distributed.is_writer():
        from tqdm import tqdm
        tqdm.write(message)


def progress_bar(start: int, total: int) -> Any:
    from tqdm import tqdm
    return tqdm(initial=start, total=total, desc="train", unit="step",
                disable=not distributed.is_writer(), dynamic_ncols=True, mininterval=1.0)


@jax.jit
def _sum_steps(totals: dict[str, jax.Array], metrics: dict[str, jax.Array]
               ) -> dict[str, jax.Array]:
    """totals + the sum over the steps of one call's metrics ([K] each)."""
    return jax.tree.map(lambda total, m: total + jnp.sum(m, axis=0), totals, metrics)


# The parameters' norm is logged from the state at log steps, not summed over steps:
# with the update's norm, computing it in every step cost ~70 ms of a ~2 s BERT-Small CPU
# step (passes over parameters and updates that also split the AdamW update into more
# fusions).
global_norm = jax.jit(optax.tree.norm)
STOP_POLL_S = 0.1  # how often an eval waiting for its compile looks for a stop request


class TrainMeter:
    """Sums step metrics on device between log points; one host sync per log row.
    `summarize` turns the summed metrics into the row's means (losses, accuracies); the
    meter adds grad_norm, skipped, steps_per_sec and, from the steps' `real_tokens` (and
    `pairs`, where a step counts them; steps.batch_counts), tokens_per_sec (real tokens:
    padding is not counted), padding_fraction (of the batches' token slots) and
    pairs_per_step."""

    def __init__(self, summarize: Callable[[dict[str, Any]], dict[str, float]]) -> None:
        self.summarize = summarize
        self.totals: dict[str, jax.Array] | None = None
        self.steps = self.tokens = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, jax.Array], steps: int, tokens: int) -> None:
        """One call's metrics ([steps] each); `tokens`: its batches' token slots (padding
        included)."""
        if self.totals is None:
            self.totals = jax.tree.map(lambda m: jnp.zeros(m.shape[1:], m.dtype), metrics)
        self.totals = _sum_steps(self.totals, metrics)
        self.steps += steps
        self.tokens += tokens

    def summary(self) -> dict[str, float]:
        totals = jax.device_get(self.totals)
        elapsed = time.perf_counter() - self.start
        row = self.summarize(totals)
        row["grad_norm"] = float(totals["grad_norm"]) / self.steps
        row["skipped"] = float(totals["skipped"])
        real_tokens = float(totals["real_tokens"])
        row["tokens_per_sec"] = real_tokens / elapsed
        row["padding_fraction"] = 1.0 - real_tokens / self.tokens
        if "pairs" in totals:
            row["pairs_per_step"] = float(totals["pairs"]) / self.steps
        row["steps_per_sec"] = self.steps / elapsed
        self.__init__(self.summarize)
        return row


class NonfiniteGuard:
    """Stops the run after `limit` consecutive skipped (non-finite) steps.

    Each call's skip flags stay on the device until `check` reads all of them at once (the
    loop calls it at log steps, before checkpoints and at the end): no host sync per call.
    The stop names the steps of the run that reached the limit.
    """

    def __init__(self, run: int, limit: int, ckpt: checkpoint.TrainCheckpointer):
        self.run, self.limit, self.ckpt = run, limit, ckpt
        self.pending: list[tuple[int, jax.Array]] = []

    def push(self, first_step: int, skipped: jax.Array) -> None:
        """`skipped`: [K] flags of steps first_step, first_step + 1, ..."""
        self.pending.append((first_step, skipped))

    def check(self) -> None:
        pending, self.pending = self.pending, []
        flags = jax.device_get([skipped for _, skipped in pending])
        for (first_step, _), call_flags in zip(pending, flags):
            for step, skipped in enumerate(np.asarray(call_flags), start=first_step):
                self.run = self.run + 1 if skipped else 0
                if self.limit and self.run >= self.limit:
                    self._stop(step)

    def _stop(self, step: int) -> None:
        self.ckpt.close()
        raise UserError(
            f"loss or gradients were not finite for {self.run} consecutive steps (steps "
            f"{step - self.run + 1}-{step} skipped, config.train.max_consecutive_nonfinite="
            f"{self.limit}); the last good checkpoint is kept in {self.ckpt.directory}; "
            f"lower config.optimizer.learning_rate or check the data")


class Evaluations:
    """Held-out evaluations: the eval step is compiled in a background thread once the
    first train call is running (the first eval does not wait for a compile), and each
    eval's row is written and printed.

    `metrics(params, final, batches)` evaluates over `batches` (the job's held-out batches;
    periodic evals, final=False, may read a subset). A stop request (`watch`) cuts an eval
    between batches, and its wait for the compile."""

    def __init__(self, eval_step: Any, params: Any, example: dict[str, np.ndarray],
                 mesh: Mesh, metrics: Callable[[Any, bool, Iterable], dict[str, float]],
                 batches: Callable[[], Iterable], writer: metrics_lib.MetricWriter,
                 watch: preemption.Watch) -> None:
        self.metrics, self.batches, self.writer, self.watch = metrics, batches, writer, watch
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params)
        batch = global_batch(example, mesh)
        self._compile = lambda: eval_step.lower(abstract, batch).compile()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._compiled: concurrent.futures.Future | None = None

    def compile_in_background(self) -> None:
        if self._compiled is None:
            self._compiled = self._pool.submit(self._compile)
            self._pool.shutdown(wait=False)  # the thread ends with its compile

    def compute(self, params: Any, final: bool) -> dict[str, float] | None:
        """The eval's metrics; None if a stop request cut it."""
        self.compile_in_background()
        try:
            while not self._compiled.done():
                if self.watch.requested:
                    raise preemption.StopRequested
                concurrent.futures.wait([self._compiled], timeout=STOP_POLL_S)
            self._compiled.result()  # jit reuses the compiled executable
            return self.metrics(params, final, self.watch.stoppable(self.batches()))
        except preemption.StopRequested:
            return None

    def write(self, step: int, row: dict[str, float]) -> None:
        self.writer.write(step, row, split="eval")
        say(f"eval step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items()))
