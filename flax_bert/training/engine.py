"""The engine every job runs on: resume -> device feed -> train calls -> evals -> final save
-> plots. A job (pretraining, fine-tuning) builds what differs, its model, optimizer, data
and metrics, as a `Job`, and hands it to `run`.

    run_locked(body, config, workdir)   checks, jax.distributed, the run folder's lock
      body(config, workdir) -> Job      the job's own part
      run(job, config, workdir)         everything below
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable, Iterable, NoReturn

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from flax_bert import checkpoint, distributed, workdir as workdir_lib
from flax_bert.errors import UserError
from flax_bert.training import checks, metrics as metrics_lib, monitor, preemption
from flax_bert.training import sharding, state as state_lib, steps
from flax_bert.training.feed import DeviceFeed, call_sizes, global_batch
from flax_bert.training.monitor import say

# Train calls the host may dispatch ahead of the devices: enough to keep them busy while the
# host builds the next input; more would only queue input batches in device memory.
CALLS_IN_FLIGHT = 2


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
    # (eval_on, final, eval_batches()) -> the eval row, where eval_on(local batch) runs the
    # compiled eval step on the current params; periodic evals (final False) may read a
    # subset.
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
    """`body(config, workdir)` after the config's choices are checked, jax.distributed is
    set up and `workdir` is checked and locked (process 0 holds the lock; before anything
    is written)."""
    checks.check_config(config)
    distributed.maybe_initialize(config.distributed)
    workdir = checks.check_workdir(workdir)
    with workdir_lib.locked_for_run(workdir):
        return body(config, workdir)


def first_batch(batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The first held-out batch; a UserError if there is none."""
    for batch in batches:
        return batch
    raise UserError("the held-out split is empty; raise config.data.eval_fraction")


def run(job: Job, config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `job` in `workdir` to config.train.steps, resuming from its newest
    checkpoint; returns the final eval metrics."""
    t = config.train
    mesh = sharding.make_mesh(config.mesh)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    ckpt = checkpoint.TrainCheckpointer(workdir, config.checkpoint)
    state, shardings = state_lib.create_train_state(job.model, job.tx, mesh, init_rng,
                                                    job.seq_length)
    if job.init_params is not None and ckpt.latest_step() is None:
        state = state.replace(params=state.params | {
            name: jax.device_put(tree, shardings.params[name])
            for name, tree in job.init_params().items()})
    state, dropout_rng, begin = resume(ckpt, state, dropout_rng, job.train_iter)
    if distributed.is_writer():
        job.write_files()
    writer = metrics_lib.MetricWriter(workdir, enabled=distributed.is_writer(),
                                      tensorboard=t.get("tensorboard", True))
    writer.truncate_after(begin)

    train_step = steps.jit_train_step(mesh, shardings, step_fn=job.train_step, model=job.model,
                                      tx=job.tx, schedule=job.schedule, **job.step_kwargs)
    eval_step = steps.jit_eval_step(mesh, shardings.params, model=job.model,
                                    eval_fn=job.eval_step)

    def evaluate(params: Any, final: bool) -> dict[str, float]:
        return job.evaluate(lambda local: eval_step(params, global_batch(local, mesh)), final,
                            job.eval_batches())

    evals = monitor.Evaluations(eval_step, state.params, first_batch(job.eval_batches()),
                                mesh, evaluate, writer)
    feed = DeviceFeed(job.train_iter, call_sizes(
        begin, t.steps, t.steps_per_call, every=(t.log_every, t.eval_every, ckpt.every),
        at=(*job.boundaries, t.stop_after)), mesh)
    state = train_calls(state, dropout_rng, begin, feed, train_step, t=t, ckpt=ckpt,
                        writer=writer, meter=monitor.TrainMeter(job.summarize), evals=evals,
                        schedule=job.schedule, log_fields=job.log_fields)
    final = final_eval_and_save(t.steps, state, dropout_rng, feed, evals, ckpt)
    if distributed.is_writer():
        for path in metrics_lib.plot_curves(workdir, job.plots):
            say(f"wrote {path}")
        if job.finish is not None:
            job.finish(jax.device_get(state.params))
    writer.close()
    return final


def resume(ckpt: checkpoint.TrainCheckpointer, state: Any, rng: jax.Array,
           data_iter: Any) -> tuple[Any, jax.Array, int]:
    """`state`, `rng` and `data_iter` from the newest checkpoint, if any; returns the
    state, the rng and the step training begins at."""
    state, rng, restored_step = ckpt.restore(state, rng, data_iter)
    begin = int(state.step)
    if restored_step is not None:
        say(f"resumed from {ckpt.directory}/{restored_step} at step {begin}")
    return state, rng, begin


def train_calls(state: Any, rng: jax.Array, begin: int, feed: DeviceFeed, train_step: Any,
                *, t: ml_collections.ConfigDict, ckpt: checkpoint.TrainCheckpointer,
                writer: metrics_lib.MetricWriter, meter: monitor.TrainMeter,
                evals: monitor.Evaluations, schedule: optax.Schedule,
                log_fields: Callable[[Any], dict[str, float]]) -> Any:
    """Runs `train_step` on each call of `feed` from step `begin` to `t.steps`: metric rows
    every `t.log_every` steps (with `log_fields(state)`), evals every `t.eval_every`,
    checkpoints, the stop at `t.stop_after` or on a signal. The host reads device values
    only at log, eval and checkpoint steps, and runs at most CALLS_IN_FLIGHT calls ahead of
    the devices. Returns the final state."""
    guard = monitor.NonfiniteGuard(int(state.nonfinite_run), t.max_consecutive_nonfinite, ckpt)
    done = begin
    with preemption.PreemptionWatch() as watch, monitor.progress_bar(begin, t.steps) as bar:
        in_flight: collections.deque = collections.deque()
        for size, batches in feed:
            state, call_metrics = train_step(state, batches, rng)
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
            if t.eval_every and done % t.eval_every == 0 and done < t.steps:
                evals.write(done, evals.compute(state.params, final=False))
            if done < t.steps and (watch.reached(done) or done == t.stop_after):
                save_and_stop(done, t.stop_after, watch, guard, ckpt, writer, state, rng, feed)
            if done % ckpt.every == 0:
                guard.check()  # no checkpoint after a stop was due
            ckpt.save(done, state, rng, feed)
        guard.check()
    return state


def save_and_stop(step: int, stop_after: int, watch: preemption.PreemptionWatch,
                  guard: monitor.NonfiniteGuard, ckpt: checkpoint.TrainCheckpointer,
                  writer: metrics_lib.MetricWriter, *save_args: Any) -> NoReturn:
    """Saves a checkpoint of `save_args` (state, rng, data feed) at `step` and stops
    the run: at config.train.stop_after (exit 0) or on a signal (its exit code)."""
    guard.check()
    ckpt.save(step, *save_args, force=True)
    ckpt.close()
    writer.close()
    where = f"{ckpt.directory}/{step}"
    if step == stop_after:
        raise preemption.Interrupted(
            f"stopped after step {step} (config.train.stop_after); checkpoint "
            f"saved in {where}; rerun without stop_after to continue", 0)
    raise preemption.Interrupted(
        f"interrupted at step {step}; checkpoint saved in {where}; rerun the same "
        f"command to resume", watch.exit_code)


def final_eval_and_save(step: int, state: Any, rng: jax.Array, feed: DeviceFeed,
                        evals: monitor.Evaluations, ckpt: checkpoint.TrainCheckpointer
                        ) -> dict[str, float]:
    """The final eval (written with its time and the final save's: eval_seconds,
    save_seconds) and the final checkpoint, committed; returns the eval metrics."""
    start = time.perf_counter()
    final = evals.compute(state.params, final=True)
    eval_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ckpt.save(step, state, rng, feed, force=True)  # no-op if saved
    ckpt.close()  # waits for the async save to be committed
    save_seconds = time.perf_counter() - start
    say(f"final eval {eval_seconds:.1f} s, final save {save_seconds:.1f} s")
    evals.write(step, dict(final, eval_seconds=eval_seconds, save_seconds=save_seconds))
    return final

