"""The engine every job runs on: resume -> device feed -> train calls -> evals -> final save
-> exports and plots. A job (pretraining, fine-tuning) builds what differs, its model,
optimizer, data and metrics, as a `Job`, and the engine runs it.

    run_locked(body, config, workdir)   checks, jax.distributed, the run folder's lock and
                                        one preemption watch over all that follows
      body(config, workdir)             the job's own part (its data, prepared if needed)
        run(job, config, workdir)       everything below

Stops (flax_bert/preemption.py): SIGTERM / SIGINT end the run at once while nothing is
unsaved (start-up, prepare, restore, the first compile); once a train call has run, the run
saves a checkpoint at the end of the call or eval batch it is in and raises Interrupted. A
resumed run evaluates its checkpoint's step again when that is an eval step (a stop may have
cut that eval): each eval row is written once. The final eval row is a run's last write: a
rerun that finds it (after the job's checks: another model is still an error) says that the
run is finished and changes nothing.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from typing import Any, Callable, Iterable, NoReturn

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from flax_bert import checkpoint, distributed, preemption, workdir as workdir_lib
from flax_bert.errors import Interrupted, UserError
from flax_bert.training import checks, metrics as metrics_lib, monitor
from flax_bert.training import sharding, state as state_lib, steps
from flax_bert.training.feed import DeviceFeed, call_sizes, global_batch
from flax_bert.training.monitor import say

# Train calls the host may dispatch ahead of the devices: enough to keep them busy while the
# host builds the next input; more would only queue input batches in device memory.
CALLS_IN_FLIGHT = 2
TIMING_KEYS = ("eval_seconds", "save_seconds")  # of the final eval row


@dataclasses.dataclass
class Job:
    """What a job hands the engine."""

    model: nn.Module
    seq_length: int  # of the inputs `model.init` is traced with (params do not depend on it)
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    train_step: Callable  # pure: (state, batch, rng, *, model, tx, schedule, **step_kwargs)
    eval_step: Callable  # pure: (params, batch, *, model) -> sums or per-example outputs
    train_iter: Any  # endless train batches of this process; get_state / set_state
    eval_batches: Callable[[], Iterable[dict[str, np.ndarray]]]  # held-out batches, anew
    # (eval_on, final, batches) -> the eval row, where eval_on(local batch) runs the
    # compiled eval step on the current params and batches are eval_batches()'s; periodic
    # evals (final False) may read a subset.
    evaluate: Callable[[Callable[[dict], Any], bool, Iterable], dict[str, float]]
    summarize: Callable[[dict[str, Any]], dict[str, float]]  # summed train metrics -> means
    plots: tuple  # (name, metric keys) of each curve (metrics.plot_curves)
    step_kwargs: dict = dataclasses.field(default_factory=dict)
    # A new run's start: () -> top-level params subtrees that replace the fresh ones.
    init_params: Callable[[], dict] | None = None
    log_fields: Callable[[Any], dict[str, float]] = lambda state: {}  # extra train row fields
    boundaries: tuple[int, ...] = ()  # steps where a call must end (a phase switch)
    # Process 0, once the state is restored (nothing is written before): the run's files
    # (config.json, vocab.txt, ...).
    write_files: Callable[[], None] = lambda: None
    finish: Callable[[Any], None] | None = None  # the final params -> exports (process 0)


def run_locked(body: Callable[[ml_collections.ConfigDict, str], dict[str, float]],
               config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`body(config, workdir)` after the config's ranges and choices are checked,
    jax.distributed is set up, the mesh is checked against the device count (before the
    body prepares data) and `workdir` is checked and locked (process 0 holds the lock;
    before anything is written), under one preemption watch (the body's `run`s stop on its
    signals)."""
    checks.check_config(config)
    distributed.maybe_initialize(config.distributed)
    sharding.mesh_shape(config.mesh, jax.device_count())
    workdir = checks.check_workdir(workdir)
    with preemption.Watch(processes=jax.process_count()), workdir_lib.locked_for_run(workdir):
        return body(config, workdir)


def finished(workdir: str, steps: int) -> dict[str, float] | None:
    """The final eval metrics of a run in `workdir` resumed at its last step `steps`, if its
    final eval row is written ({} on processes other than 0), else None."""
    path = workdir_lib.Paths(workdir).metrics
    row = metrics_lib.eval_row(path, steps) if distributed.is_writer() else None
    if not distributed.agree(row is not None):
        return None
    say(f"{workdir} has finished its {steps} steps (the final eval is in {path}); nothing "
        f"to do: raise config.train.steps to train on")
    return {k: v for k, v in (row or {}).items() if k not in ("step", "split", *TIMING_KEYS)}


def first_batch(batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The first held-out batch; a UserError if there is none."""
    for batch in batches:
        return batch
    raise UserError("the held-out split is empty; raise config.data.eval_fraction")


def run(job: Job, config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `job` in `workdir` to config.train.steps, resuming from its newest
    checkpoint; returns the final eval metrics. A finished run (its final checkpoint
    restored, `finished`) is not run again. Signals: the run_locked watch
    (preemption.current). Whatever ends it, a save in flight is committed and the data
    pipeline's workers are ended."""
    t, watch = config.train, preemption.current()
    mesh = sharding.make_mesh(config.mesh)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    with contextlib.ExitStack() as cleanup:
        ckpt = checkpoint.TrainCheckpointer(workdir, config.checkpoint)
        cleanup.callback(ckpt.close)
        cleanup.callback(getattr(job.train_iter, "close", lambda: None))
        state, shardings = state_lib.create_train_state(job.model, job.tx, mesh, init_rng,
                                                        job.seq_length)
        if job.init_params is not None and ckpt.latest_step() is None:
            state = state.replace(params=state.params | {
                name: jax.device_put(tree, shardings.params[name])
                for name, tree in job.init_params().items()})
        state, dropout_rng, begin = resume(ckpt, state, dropout_rng, job.train_iter)
        if begin == t.steps and (final := finished(workdir, t.steps)) is not None:
            return final
        if distributed.is_writer():
            job.write_files()
        writer = metrics_lib.MetricWriter(workdir, enabled=distributed.is_writer(),
                                          tensorboard=t.get("tensorboard", True))
        cleanup.callback(writer.close)
        writer.truncate_after(begin)

        train_step = steps.jit_train_step(mesh, shardings, step_fn=job.train_step,
                                          model=job.model, tx=job.tx, schedule=job.schedule,
                                          **job.step_kwargs)
        eval_step = steps.jit_eval_step(mesh, shardings.params, model=job.model,
                                        eval_fn=job.eval_step)

        def evaluate(params: Any, final: bool, batches: Iterable) -> dict[str, float]:
            return job.evaluate(lambda local: eval_step(params, global_batch(local, mesh)),
                                final, batches)

        evals = monitor.Evaluations(eval_step, state.params, first_batch(job.eval_batches()),
                                    mesh, evaluate, job.eval_batches, writer, watch)
        if t.eval_every and 0 < begin < t.steps and begin % t.eval_every == 0:
            # A stop may have cut this step's eval; a signal during it ends the run at once.
            evals.write(begin, evals.compute(state.params, final=False))
        feed = DeviceFeed(job.train_iter, call_sizes(
            begin, t.steps, t.steps_per_call, every=(t.log_every, t.eval_every, ckpt.every),
            at=(*job.boundaries, t.stop_after)), mesh)
        stop = Stop(watch, ckpt, t.stop_after, dropout_rng, feed)
        state = train_calls(state, dropout_rng, begin, feed, train_step, t=t, ckpt=ckpt,
                            writer=writer, meter=monitor.TrainMeter(job.summarize), evals=evals,
                            schedule=job.schedule, log_fields=job.log_fields, stop=stop)
        return final_eval_save_and_exports(job, t.steps, state, evals, stop, workdir)


def resume(ckpt: checkpoint.TrainCheckpointer, state: Any, rng: jax.Array,
           data_iter: Any) -> tuple[Any, jax.Array, int]:
    """`state`, `rng` and `data_iter` from the newest checkpoint, if any; returns the
    state, the rng and the step training begins at."""
    state, rng, restored_step = ckpt.restore(state, rng, data_iter)
    begin = int(state.step)
    if restored_step is not None:
        say(f"resumed from {ckpt.directory}/{restored_step} at step {begin}")
    return state, rng, begin


@dataclasses.dataclass
class Stop:
    """Ends a run early with a checkpoint of everything it trained: on a signal (`watch`)
    or after config.train.stop_after."""

    watch: preemption.Watch
    ckpt: checkpoint.TrainCheckpointer
    stop_after: int
    rng: jax.Array
    feed: DeviceFeed
    guard: monitor.NonfiniteGuard | None = None  # set by the train loop

    def save_and_stop(self, step: int, state: Any, then: str = "") -> NoReturn:
        """Saves (state, rng, data position) at `step` and raises Interrupted. `then`:
        what the rerun does besides resuming."""
        if self.guard is not None:
            self.guard.check()  # no checkpoint after a stop was due
        self.ckpt.save(step, state, self.rng, self.feed, force=True)
        self.ckpt.wait()
        where = f"{self.ckpt.directory}/{step}"
        if step == self.stop_after and not self.watch.requested:
            raise Interrupted(f"stopped after step {step} (config.train.stop_after); "
                              f"checkpoint saved in {where}; rerun without stop_after to "
                              f"continue", 0)
        raise self.watch.interrupted(f"at step {step}; checkpoint saved in {where}; "
                                     f"{preemption.RESUME}{then}")


def train_calls(state: Any, rng: jax.Array, begin: int, feed: DeviceFeed, train_step: Any,
                *, t: ml_collections.ConfigDict, ckpt: checkpoint.TrainCheckpointer,
                writer: metrics_lib.MetricWriter, meter: monitor.TrainMeter,
                evals: monitor.Evaluations, schedule: optax.Schedule,
                log_fields: Callable[[Any], dict[str, float]], stop: Stop) -> Any:
    """Runs `train_step` on each call of `feed` from step `begin` to `t.steps`: metric rows
    every `t.log_every` steps (with `log_fields(state)`), evals every `t.eval_every`,
    checkpoints, the stop at `t.stop_after` or on a signal (before the step's eval, or
    cutting it). The host reads device values only at log, eval and checkpoint steps, and
    runs at most CALLS_IN_FLIGHT calls ahead of the devices. Returns the final state."""
    guard = stop.guard = monitor.NonfiniteGuard(int(state.nonfinite_run),
                                                t.max_consecutive_nonfinite, ckpt)
    done = begin
    with monitor.progress_bar(begin, t.steps) as bar:
        in_flight: collections.deque = collections.deque()
        for size, batches in feed:
            state, call_metrics = train_step(state, batches, rng)
            stop.watch.defer()  # this process has trained: a signal saves first
            feed.prefetch()  # the next call's input goes to the devices while this one runs
            in_flight.append(call_metrics["skipped"])
            if len(in_flight) > CALLS_IN_FLIGHT:  # bounds the queued calls and their input
                in_flight.popleft().block_until_ready()
            evals.compile_in_background()
            first, done = done + 1, done + size
            guard.push(first, call_metrics["skipped"])
            meter.add(call_metrics, size, batches["input_ids"].size)
            bar.update(size)
            if done % t.log_every == 0 or done == t.steps:
                guard.check()
                row = meter.summary()
                row.update(log_fields(state))  # after step `done`
                row["learning_rate"] = float(schedule(done - 1))
                writer.write(done, row)
            if done < t.steps and (stop.watch.reached(done) or done == t.stop_after):
                stop.save_and_stop(done, state)
            if t.eval_every and done % t.eval_every == 0 and done < t.steps:
                row = evals.compute(state.params, final=False)
                if row is None:  # cut by a signal: the rerun evaluates this step
                    stop.save_and_stop(done, state)
                evals.write(done, row)
            if done % ckpt.every == 0:
                guard.check()  # no checkpoint after a stop was due
            ckpt.save(done, state, rng, feed)
        guard.check()
    return state


def final_eval_save_and_exports(job: Job, step: int, state: Any, evals: monitor.Evaluations,
                                stop: Stop, workdir: str) -> dict[str, float]:
    """The final eval, the final checkpoint (committed), the exports and plots (process 0),
    then the final eval row (with the eval's and the save's seconds): the run's last write.
    A signal cuts the eval, or waits for the save, and stops the run; once the save is
    committed, the rest finishes first. Returns the eval metrics."""
    start = time.perf_counter()
    final = evals.compute(state.params, final=True)
    eval_seconds = time.perf_counter() - start
    start = time.perf_counter()
    stop.ckpt.save(step, state, stop.rng, stop.feed, force=True)  # no-op if saved
    stop.ckpt.wait()
    save_seconds = time.perf_counter() - start
    if final is None or stop.watch.requested:
        stop.save_and_stop(step, state, then=" (the final eval and exports are left)")
    stop.watch.defer()  # the exports and the last row are written whole
    say(f"final eval {eval_seconds:.1f} s, final save {save_seconds:.1f} s")
    row = dict(final, eval_seconds=eval_seconds, save_seconds=save_seconds)
    if distributed.is_writer():
        if job.finish is not None:
            job.finish(jax.device_get(state.params))
        last = {"step": step, "split": "eval", **row}
        for path in metrics_lib.plot_curves(workdir, job.plots, more_rows=(last,)):
            say(f"wrote {path}")
    evals.write(step, row)
    return final
