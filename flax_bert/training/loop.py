"""The training loop: data -> sharded train steps -> metrics, evals and checkpoints."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Callable, Iterable, Iterator, NoReturn

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from flax_bert import checkpoint, losses, workdir as workdir_lib
from flax_bert.config import BertConfig
from flax_bert.data import examples, pipeline, prepare, prepared
from flax_bert.errors import UserError
from flax_bert.model import BertForPreTraining
from flax_bert.training import metrics as metrics_lib
from flax_bert.training import distributed, optimizer, preemption, sharding, state as state_lib, steps

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# BertConfig fields that shape training but not the parameters.
TRAINING_ONLY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob",
                        "initializer_range")
PHASE1_DIR_SUFFIX = "_phase1"  # Phase-1 data goes next to the main prepared folder.
SUM_KEYS = ("mlm_loss_sum", "mlm_correct", "mlm_count",
            "nsp_loss_sum", "nsp_correct", "nsp_count")


def check_workdir(workdir: str) -> str:
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file; pass a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"--workdir {workdir} cannot be created ({e.strerror}); "
                        "pass a writable directory") from e
    if not os.access(workdir, os.W_OK):
        raise UserError(f"--workdir {workdir} is not writable; pass a writable directory")
    return workdir


def model_config_from(config: ml_collections.ConfigDict, vocab_size: int) -> BertConfig:
    """The run's BertConfig, validated; `vocab_size` fills config.model.vocab_size = 0."""
    fields = config.model.to_dict()
    fields["vocab_size"] = fields["vocab_size"] or vocab_size
    try:
        model_config = BertConfig(**fields)
    except (TypeError, ValueError) as e:
        raise UserError(f"config.model: {e}") from e
    if config.data.max_seq_length > model_config.max_position_embeddings:
        raise UserError(
            f"config.data.max_seq_length ({config.data.max_seq_length}) exceeds "
            f"config.model.max_position_embeddings ({model_config.max_position_embeddings}); "
            f"lower one or raise the other")
    return model_config


def model_config_for(config: ml_collections.ConfigDict, meta: dict) -> BertConfig:
    """The run's BertConfig, with the prepared data's vocab size, checked against it."""
    if config.model.vocab_size not in (0, meta["vocab_size"]):
        raise UserError(
            f"the data's vocab has {meta['vocab_size']} tokens but config.model.vocab_size is "
            f"{config.model.vocab_size}; set --config.model.vocab_size={meta['vocab_size']} "
            f"(or 0: take the data's)")
    return model_config_from(config, meta["vocab_size"])


def precheck_model(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Config mistakes and a workdir of another model, caught before data is prepared.
    The vocab size (when taken from the data) is the workdir's, or a stand-in for now."""
    try:
        vocab_size = checkpoint.load_config(workdir).vocab_size
    except (OSError, ValueError, TypeError):  # none yet, or unreadable: check_same_model says
        vocab_size = 1
    check_same_model(workdir, model_config_from(config, vocab_size))


def check_same_model(workdir: str, model_config: BertConfig) -> None:
    """A workdir trains one model: refuses to continue it with another architecture.
    Dropout and init range may change (continued pretraining often changes dropout)."""
    path = os.path.join(workdir, checkpoint.CONFIG_FILE)
    if not os.path.exists(path):
        return
    try:
        saved = checkpoint.load_config(workdir)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{path} cannot be read ({e}); restore it or use a new --workdir") from e
    for field in dataclasses.fields(BertConfig):
        if field.name in TRAINING_ONLY_FIELDS:
            continue
        old, new = getattr(saved, field.name), getattr(model_config, field.name)
        if old != new:
            raise UserError(
                f"{path} has {field.name}={old!r} but the config asks for {new!r}; "
                f"use the workdir's model config or a new --workdir")


def check_phase1(config: ml_collections.ConfigDict) -> int:
    """Validates the phase-1 fields; returns phase 1's step count (0: one phase)."""
    t, max_len = config.train, config.data.max_seq_length
    if not 0.0 <= t.phase1_fraction < 1.0:
        raise UserError(f"config.train.phase1_fraction ({t.phase1_fraction}) must be in "
                        f"[0, 1); 0 trains at config.data.max_seq_length throughout")
    steps = int(t.phase1_fraction * t.steps)
    if steps and not examples.NUM_SPECIAL_IN_PAIR + 1 < t.phase1_seq_length < max_len:
        raise UserError(
            f"config.train.phase1_seq_length ({t.phase1_seq_length}) must be shorter than "
            f"config.data.max_seq_length ({max_len}) and > {examples.NUM_SPECIAL_IN_PAIR + 1}; "
            f"or set config.train.phase1_fraction=0")
    return steps


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


def evaluate(eval_step: Any, params: Any, batches: Iterable[dict[str, np.ndarray]],
             mesh: Mesh, max_batches: int) -> dict[str, float]:
    totals = None
    for i, local in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        sums = eval_step(params, global_batch(local, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise UserError("the held-out split is empty; raise config.data.eval_fraction")
    return losses.summarize(jax.device_get(totals))


@jax.jit
def _sum_steps(totals: dict[str, jax.Array], metrics: dict[str, jax.Array]
               ) -> dict[str, jax.Array]:
    """totals + the sum over the steps of one call's metrics ([K] each)."""
    return jax.tree.map(lambda total, m: total + jnp.sum(m, axis=0), totals, metrics)


# The parameters' norm is logged from the state at log steps, not summed over steps:
# with the update's norm, computing it in every step cost ~70 ms of a ~2 s BERT-Small CPU
# step (passes over parameters and updates that also split the AdamW update into more
# fusions).
_global_norm = jax.jit(optax.tree.norm)


def _pretraining_summary(totals: dict[str, Any]) -> dict[str, float]:
    return losses.summarize({k: totals[k] for k in SUM_KEYS})


class _TrainMeter:
    """Sums step metrics on device between log points; one host sync per log row.
    `summarize` turns the summed metrics into the row's means (losses, accuracies)."""

    def __init__(self, summarize: Any = _pretraining_summary) -> None:
        self.summarize = summarize
        self.totals: dict[str, jax.Array] | None = None
        self.steps = self.tokens = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, jax.Array], steps: int, tokens: int) -> None:
        """One call's metrics ([steps] each); `tokens`: its batches' total size (padding
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
        row["tokens_per_sec"] = self.tokens / elapsed
        row["steps_per_sec"] = self.steps / elapsed
        self.__init__(self.summarize)
        return row


class _NonfiniteGuard:
    """Counts consecutive skipped (non-finite) steps on the host, one call behind.

    The skip flags of a call are read after the next call has been dispatched, so the
    host waits only for a call that is already finished: no stall of the device pipeline.
    """

    def __init__(self, run: int, limit: int, ckpt: checkpoint.TrainCheckpointer):
        self.run, self.limit, self.ckpt = run, limit, ckpt
        self.pending: tuple[int, jax.Array] | None = None

    def push(self, first_step: int, skipped: jax.Array) -> None:
        """`skipped`: [K] flags of steps first_step, first_step + 1, ..."""
        self.pending = (first_step, skipped)

    def check_previous(self) -> None:
        if self.pending is None:
            return
        first_step, flags = self.pending
        self.pending = None
        for step, skipped in enumerate(np.asarray(flags), start=first_step):
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


def save_and_stop(step: int, stop_after: int, watch: preemption.PreemptionWatch,
                  guard: _NonfiniteGuard, ckpt: checkpoint.TrainCheckpointer,
                  writer: metrics_lib.MetricWriter, *save_args: Any) -> NoReturn:
    """Saves a checkpoint of `save_args` (state, rng, data iterator) at `step` and stops
    the run: at config.train.stop_after (exit 0) or on a signal (its exit code)."""
    guard.check_previous()
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


def _progress_bar(start: int, total: int, enabled: bool) -> Any:
    from tqdm import tqdm
    return tqdm(initial=start, total=total, desc="train", unit="step", disable=not enabled,
                dynamic_ncols=True, mininterval=1.0)


def _say(message: str) -> None:
    if jax.process_index() == 0:
        from tqdm import tqdm
        tqdm.write(message)


def run_locked(body: Callable[[ml_collections.ConfigDict, str], dict[str, float]],
               config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`body(config, workdir)` after jax.distributed is set up and `workdir` is checked
    and locked (process 0 holds the lock; before anything is written)."""
    distributed.maybe_initialize(config.distributed)
    workdir = check_workdir(workdir)
    with workdir_lib.locked_for_run(workdir):
        return body(config, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) pretraining in `workdir`; returns the final eval metrics."""
    return run_locked(_train_and_evaluate, config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    writer_process = jax.process_index() == 0
    train_cfg = config.train
    precheck_model(config, workdir)  # before prepare writes anything
    if train_cfg.steps_per_call < 1:
        raise UserError(f"config.train.steps_per_call ({train_cfg.steps_per_call}) must be "
                        f">= 1; 1 runs one optimizer step per call")

    # Data: prepared once (cached in the workdir unless data.prepared_dir is given).
    # Continued pretraining of an imported model tokenizes with that model's vocab.
    pretrained = os.path.join(workdir, checkpoint.PRETRAINED_DIR)
    pretrained_vocab = os.path.join(pretrained, checkpoint.VOCAB_FILE)
    data_config = ml_collections.ConfigDict(config.data)
    if not data_config.vocab and os.path.isfile(pretrained_vocab):
        data_config.vocab = pretrained_vocab
        _say(f"tokenizing with {pretrained_vocab}")
    data_dir = data_config.prepared_dir or os.path.join(workdir, "data")
    phase1 = None  # one phase unless config.train.phase1_fraction > 0
    if phase1_steps := check_phase1(config):
        phase1 = pipeline.Phase1(
            data_dir.rstrip(os.sep) + PHASE1_DIR_SUFFIX,
            prepare.phase1_config(data_config, train_cfg.phase1_seq_length,
                                  os.path.join(data_dir, checkpoint.VOCAB_FILE)),
            train_cfg.phase1_batch_size, phase1_steps)
    if writer_process:
        if not (data_config.prepared_dir and prepared.exists(data_dir)):  # given: used as is
            prepare.prepare_from_config(data_config, data_dir)
        if phase1:
            prepare.prepare_from_config(phase1.data_config, phase1.prepared_dir)
        shutil.copyfile(os.path.join(data_dir, checkpoint.VOCAB_FILE),
                        os.path.join(workdir, checkpoint.VOCAB_FILE))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("data prepared")
    meta = pipeline.load_meta(data_dir)
    model_config = model_config_for(config, meta)
    check_same_model(workdir, model_config)

    for field in ("global_batch_size",) + (("phase1_batch_size",) if phase1 else ()):
        if train_cfg[field] % (jax.process_count() * train_cfg.grad_accum_steps):
            raise UserError(f"config.train.{field} ({train_cfg[field]}) must divide by "
                            f"processes x grad_accum_steps")
    mesh = sharding.make_mesh(config.mesh)
    model = BertForPreTraining(model_config, dtype=DTYPES[train_cfg.dtype],
                               remat_policy=train_cfg.remat_policy,
                               dropout_impl=train_cfg.dropout_impl,
                               fused_backward=train_cfg.fused_backward,
                               attention_impl=train_cfg.attention_impl)
    tx, schedule = optimizer.make_optimizer(config.optimizer, train_cfg.steps)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))

    ckpt = checkpoint.TrainCheckpointer(workdir, config.checkpoint)
    init_params = None
    if ckpt.latest_step() is None and os.path.isdir(pretrained):
        check_same_model(pretrained, model_config)
        init_params = checkpoint.load_params(pretrained)
        _say(f"initialising from {pretrained} (continued pretraining)")
    state, state_shardings = state_lib.create_train_state(
        model, tx, mesh, init_rng, meta["max_seq_length"], params=init_params)

    train_iter = pipeline.make_train_iterator(
        data_dir, data_config, global_batch_size=train_cfg.global_batch_size, seed=config.seed,
        phase1=phase1)
    state, dropout_rng, restored_step = ckpt.restore(state, dropout_rng, train_iter)
    start = int(state.step)
    if restored_step is not None:
        _say(f"resumed from {ckpt.directory}/{restored_step} at step {start}")
    if writer_process:
        model_config.to_json_file(os.path.join(workdir, checkpoint.CONFIG_FILE))
    writer = metrics_lib.MetricWriter(workdir, enabled=writer_process)
    writer.truncate_after(start)

    train_step = steps.jit_train_step(mesh, state_shardings, model=model, tx=tx,
                                      schedule=schedule,
                                      grad_accum_steps=train_cfg.grad_accum_steps)
    eval_step = steps.jit_eval_step(mesh, state_shardings.params, model=model)

    def run_eval(step: int) -> dict[str, float]:
        batches = pipeline.make_eval_iterator(
            data_dir, data_config, global_batch_size=train_cfg.global_batch_size)
        row = evaluate(eval_step, state.params, batches, mesh, train_cfg.eval_batches)
        writer.write(step, row, split="eval")
        _say(f"eval step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items()))
        return row

    if phase1 and start < phase1.steps:
        _say(f"phase 1: steps 1-{phase1.steps} on {train_cfg.phase1_seq_length}-token examples "
             f"({phase1.prepared_dir}), then {meta['max_seq_length']}-token examples")
    meter = _TrainMeter()
    guard = _NonfiniteGuard(int(state.nonfinite_run), train_cfg.max_consecutive_nonfinite, ckpt)
    stop_after = train_cfg.stop_after
    sizes = call_sizes(start, train_cfg.steps, train_cfg.steps_per_call,
                       every=(train_cfg.log_every, train_cfg.eval_every, ckpt.every),
                       at=(phase1.steps if phase1 else 0, stop_after))
    done = start
    with preemption.PreemptionWatch() as watch, _progress_bar(
            start, train_cfg.steps, writer_process) as bar:
        for size in sizes:
            batches = global_batch(stack_batches([next(train_iter) for _ in range(size)]),
                                   mesh, stacked=True)
            state, call_metrics = train_step(state, batches, dropout_rng)
            first, done = done + 1, done + size
            guard.check_previous()  # the previous call's skip flags: it is done by now
            guard.push(first, call_metrics["skipped"])
            meter.add(call_metrics, size, batches["input_ids"].size)
            bar.update(size)
            if done % train_cfg.log_every == 0 or done == train_cfg.steps:
                row = meter.summary()
                row["param_norm"] = float(_global_norm(state.params))  # after step `done`
                row["learning_rate"] = float(schedule(done - 1))
                writer.write(done, row)
            if train_cfg.eval_every and done % train_cfg.eval_every == 0 and done < train_cfg.steps:
                run_eval(done)
            if done < train_cfg.steps and (watch.reached(done) or done == stop_after):
                save_and_stop(done, stop_after, watch, guard, ckpt, writer, state, dropout_rng,
                              train_iter)
            ckpt.save(done, state, dropout_rng, train_iter)
        guard.check_previous()

    final = run_eval(train_cfg.steps)
    ckpt.save(train_cfg.steps, state, dropout_rng, train_iter, force=True)  # no-op if saved
    ckpt.close()
    if writer_process:
        for path in metrics_lib.plot_curves(workdir):
            _say(f"wrote {path}")
    writer.close()
    return final
