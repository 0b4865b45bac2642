"""The training loop every task runs, in one function: `train_and_evaluate(task, config,
workdir)` restores (or starts) the run, runs the train calls with their metric rows,
evaluations, checkpoints and stops, then the final evaluation, save and exports.

    with run_folder(config, workdir) as workdir:        checks, jax.distributed, the
        task = SomeTask(config, workdir)                run folder's lock, one preemption
        train_and_evaluate(task, config, workdir)       watch over all that follows

A task (flax_bert/tasks/) is a small object that gives the loop its model, data, loss,
evaluation and export (`Task`); nothing here knows which task it runs.

Stops (flax_bert/preemption.py): SIGTERM / SIGINT end the run at once while nothing is
unsaved (start-up, prepare, restore, the first compile); once a train call has run, the run
saves a checkpoint at the end of the call or eval batch it is in and raises Interrupted. A
resumed run evaluates its checkpoint's step again when that is an eval step (a stop may have
cut that eval): each eval row is written once. The final eval row is a run's last write: a
rerun that finds it says that the run is finished and changes nothing.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import time
from typing import Any, Callable, Iterable, Iterator, NoReturn, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from flax_bert import distributed, preemption
from flax_bert.console import progress_bar, say
from flax_bert.errors import Interrupted, UserError
from flax_bert.trainer import (checkpoint, checks, metric_log, optimizer,
                               run_folder as run_folder_lib)
from flax_bert.trainer import sharding, state as state_lib, step as step_lib
from flax_bert.trainer.feed import DeviceFeed, call_sizes, global_batch

# Train calls the host may dispatch ahead of the devices: enough to keep them busy while the
# host builds the next input; more would only queue input batches in device memory.
CALLS_IN_FLIGHT = 2
TIMING_KEYS = ("eval_seconds", "save_seconds")  # of the final eval row
STOP_POLL_S = 0.1  # how often an eval waiting for its compile looks for a stop request


class Task(step_lib.Objective, Protocol):
    """What a task gives the loop, besides its step's objective (step.Objective)."""

    model: nn.Module  # its init gives the params' shapes and shardings
    seq_length: int  # of the inputs `model.init` is traced with (params do not depend on it)
    plots: tuple  # (name, metric keys) of each curve (metric_log.plot_curves)
    boundaries: tuple[int, ...]  # steps where a train call must end (a phase switch)

    def train_batches(self) -> Any:
        """Endless train batches of this process (get_state / set_state: checkpointed)."""

    def eval_batches(self) -> Iterable[dict[str, np.ndarray]]:
        """This process's held-out batches, from the first, anew at each call."""

    def evaluate(self, eval_on: Callable[[dict], Any], batches: Iterable[dict],
                 final: bool) -> dict[str, float]:
        """The eval row: `eval_on(local batch)` runs the compiled eval step on the current
        params; `batches` are eval_batches()'s; a periodic eval (not final) may read a
        subset."""

    def summarize(self, totals: dict[str, Any]) -> dict[str, float]:
        """Summed train metrics -> the train row's means (losses, accuracies)."""

    def log_fields(self, state: state_lib.TrainState) -> dict[str, float]:
        """More fields of a train row, from the state after its step."""

    def initial_params(self) -> dict | None:
        """A new run's start: top-level params subtrees that replace the fresh ones."""

    def write_files(self) -> None:
        """The run folder's own files (config.json, vocab.txt, ...), once restored."""

    def export(self, params: Any) -> None:
        """The final params -> exports (process 0)."""


@contextlib.contextmanager
def run_folder(config: ml_collections.ConfigDict, workdir: str) -> Iterator[str]:
    """Checks the config's ranges and choices, joins jax.distributed, checks the mesh
    against the device count (before the body prepares data), checks and locks `workdir`
    (process 0 holds the lock; before anything is written) and watches for stop signals
    over the body, which gets the absolute workdir."""
    checks.check_config(config)
    distributed.maybe_initialize(config.distributed)
    sharding.mesh_shape(config.mesh, jax.device_count())
    workdir = checks.check_workdir(workdir)
    with (preemption.Watch(processes=jax.process_count()),
          run_folder_lib.locked_for_run(workdir)):
        yield workdir


def train_and_evaluate(task: Task, config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
    """Trains `task` in `workdir` to config.train.steps, resuming from its newest
    checkpoint; returns the final eval metrics. Runs inside `run_folder` (its watch stops
    the run). Whatever ends it, a save in flight is committed and the data pipeline's
    workers are ended."""
    t, watch = config.train, preemption.current()
    mesh = sharding.make_mesh(config.mesh)
    init_rng, rng = jax.random.split(jax.random.PRNGKey(config.seed))
    tx, schedule = optimizer.make_optimizer(config.optimizer, t.steps)
    with contextlib.ExitStack() as cleanup:
        # ---- Restore the newest checkpoint, or start. ------------------------------------
        ckpt = checkpoint.TrainCheckpointer(workdir, config.checkpoint)
        cleanup.callback(ckpt.close)
        train_batches = task.train_batches()
        cleanup.callback(getattr(train_batches, "close", lambda: None))
        state, shardings = state_lib.create_train_state(task.model, tx, mesh, init_rng,
                                                        task.seq_length)
        if ckpt.latest_step() is None and (initial := task.initial_params()) is not None:
            state = state.replace(params=state.params | {
                name: jax.device_put(tree, shardings.params[name])
                for name, tree in initial.items()})
        state, rng, restored = ckpt.restore(state, rng, train_batches)
        begin = int(state.step)
        if restored is not None:
            say(f"resumed from {ckpt.directory}/{restored} at step {begin}")
        if begin == t.steps and (final := finished(workdir, t.steps)) is not None:
            return final
        if distributed.is_writer():
            task.write_files()
        writer = metric_log.MetricWriter(workdir, enabled=distributed.is_writer(),
                                         tensorboard=t.get("tensorboard", True))
        cleanup.callback(writer.close)
        writer.truncate_after(begin)

        # ---- The compiled steps, the feed and what ends a run early. ----------------------
        train_step = step_lib.jit_train_step(mesh, shardings, objective=task, tx=tx,
                                             schedule=schedule,
                                             grad_accum_steps=t.grad_accum_steps)
        evals = Evaluator(task, step_lib.jit_eval_step(mesh, shardings.params, task),
                          state.params, mesh, writer, watch)
        if t.eval_every and 0 < begin < t.steps and begin % t.eval_every == 0:
            # A stop may have cut this step's eval; a signal during it ends the run at once.
            evals.write(begin, evals.compute(state.params, final=False))
        feed = DeviceFeed(train_batches, call_sizes(
            begin, t.steps, t.steps_per_call, every=(t.log_every, t.eval_every, ckpt.every),
            at=(*task.boundaries, t.stop_after)), mesh)
        guard = NonfiniteGuard(int(state.nonfinite_run), t.max_consecutive_nonfinite, ckpt)

        def save_and_stop(step: int, then: str = "") -> NoReturn:
            """Saves (state, rng, data position) at `step` and raises Interrupted. `then`:
            what the rerun does besides resuming."""
            guard.check()  # no checkpoint after a stop was due
            ckpt.save(step, state, rng, feed, force=True)
            ckpt.wait()
            where = f"{ckpt.directory}/{step}"
            if step == t.stop_after and not watch.requested:
                raise Interrupted(f"stopped after step {step} (config.train.stop_after); "
                                  f"checkpoint saved in {where}; rerun without stop_after "
                                  f"to continue", 0)
            raise watch.interrupted(f"at step {step}; checkpoint saved in {where}; "
                                    f"{preemption.RESUME}{then}")

        # ---- The train calls: K steps each; rows, evals, saves and stops between calls. ---
        # The host reads device values only at log, eval and checkpoint steps, and runs at
        # most CALLS_IN_FLIGHT calls ahead of the devices.
        meter, done = TrainMeter(task.summarize), begin
        with progress_bar(begin, t.steps) as bar:
            in_flight: collections.deque = collections.deque()
            for size, batches in feed:
                state, call_metrics = train_step(state, batches, rng)
                watch.defer()  # this process has trained: a signal saves first
                feed.prefetch()  # the next call's input goes to the devices while this runs
                in_flight.append(call_metrics["skipped"])
                if len(in_flight) > CALLS_IN_FLIGHT:  # bounds the queued calls and input
                    in_flight.popleft().block_until_ready()
                evals.compile_in_background()
                first, done = done + 1, done + size
                guard.push(first, call_metrics["skipped"])
                meter.add(call_metrics, size, batches["input_ids"].size)
                bar.update(size)
                if done % t.log_every == 0 or done == t.steps:
                    guard.check()
                    row = meter.summary()
                    row.update(task.log_fields(state))  # after step `done`
                    row["learning_rate"] = float(schedule(done - 1))
                    writer.write(done, row)
                if done < t.steps and (watch.reached(done) or done == t.stop_after):
                    save_and_stop(done)
                if t.eval_every and done % t.eval_every == 0 and done < t.steps:
                    row = evals.compute(state.params, final=False)
                    if row is None:  # cut by a signal: the rerun evaluates this step
                        save_and_stop(done)
                    evals.write(done, row)
                if done % ckpt.every == 0:
                    guard.check()  # no checkpoint after a stop was due
                ckpt.save(done, state, rng, feed)
            guard.check()

        # ---- The final eval and save, the exports and plots, the final eval row. ----------
        # A signal cuts the eval, or waits for the save, and stops the run; once the save
        # is committed, the rest finishes first. The final eval row is the run's last write.
        start = time.perf_counter()
        final = evals.compute(state.params, final=True)
        eval_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ckpt.save(t.steps, state, rng, feed, force=True)  # no-op if saved
        ckpt.wait()
        save_seconds = time.perf_counter() - start
        if final is None or watch.requested:
            save_and_stop(t.steps, then=" (the final eval and exports are left)")
        watch.defer()  # the exports and the last row are written whole
        say(f"final eval {eval_seconds:.1f} s, final save {save_seconds:.1f} s")
        row = dict(final, eval_seconds=eval_seconds, save_seconds=save_seconds)
        if distributed.is_writer():
            task.export(jax.device_get(state.params))
            last = {"step": t.steps, "split": "eval", **row}
            for path in metric_log.plot_curves(workdir, task.plots, more_rows=(last,)):
                say(f"wrote {path}")
        evals.write(t.steps, row)
        return final


def finished(workdir: str, steps: int) -> dict[str, float] | None:
    """The final eval metrics of a run in `workdir` resumed at its last step `steps`, if its
    final eval row is written ({} on processes other than 0), else None."""
    path = run_folder_lib.Paths(workdir).metrics
    row = metric_log.eval_row(path, steps) if distributed.is_writer() else None
    if not distributed.agree(row is not None):
        return None
    say(f"{workdir} has finished its {steps} steps (the final eval is in {path}); nothing "
        f"to do: raise config.train.steps to train on")
    return {k: v for k, v in (row or {}).items() if k not in ("step", "split", *TIMING_KEYS)}


@jax.jit
def _sum_steps(totals: dict[str, jax.Array], metrics: dict[str, jax.Array]
               ) -> dict[str, jax.Array]:
    """totals + the sum over the steps of one call's metrics ([K] each)."""
    return jax.tree.map(lambda total, m: total + jnp.sum(m, axis=0), totals, metrics)


class TrainMeter:
    """Sums step metrics on device between log points; one host sync per log row.
    `summarize` (the task's) turns the summed metrics into the row's means; the meter adds
    grad_norm, skipped, steps_per_sec and, from the steps' `real_tokens` (and `pairs`,
    where a task counts them), tokens_per_sec (real tokens: padding is not counted),
    padding_fraction (of the batches' token slots) and pairs_per_step."""

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


class Evaluator:
    """The task's held-out evaluations: the eval step is compiled in a background thread
    once the first train call is running (the first eval does not wait for a compile),
    and each eval's row is written and printed. A stop request (`watch`) cuts an eval
    between batches, and its wait for the compile."""

    def __init__(self, task: Task, eval_step: Any, params: Any, mesh: Mesh,
                 writer: metric_log.MetricWriter, watch: preemption.Watch) -> None:
        self.task, self.eval_step, self.mesh = task, eval_step, mesh
        self.writer, self.watch = writer, watch
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params)
        example = global_batch(first_batch(task.eval_batches()), mesh)
        self._compile = lambda: eval_step.lower(abstract, example).compile()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._compiled: concurrent.futures.Future | None = None

    def compile_in_background(self) -> None:
        if self._compiled is None:
            self._compiled = self._pool.submit(self._compile)
            self._pool.shutdown(wait=False)  # the thread ends with its compile

    def compute(self, params: Any, final: bool) -> dict[str, float] | None:
        """The task's eval row on `params`; None if a stop request cut it."""
        self.compile_in_background()
        try:
            while not self._compiled.done():
                if self.watch.requested:
                    raise preemption.StopRequested
                concurrent.futures.wait([self._compiled], timeout=STOP_POLL_S)
            self._compiled.result()  # jit reuses the compiled executable
            return self.task.evaluate(
                lambda local: self.eval_step(params, global_batch(local, self.mesh)),
                self.watch.stoppable(self.task.eval_batches()), final)
        except preemption.StopRequested:
            return None

    def write(self, step: int, row: dict[str, float]) -> None:
        self.writer.write(step, row, split="eval")
        say(f"eval step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items()))


def first_batch(batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The first held-out batch; a UserError if there is none."""
    for batch in batches:
        return batch
    raise UserError("the held-out split is empty; raise config.data.eval_fraction")
