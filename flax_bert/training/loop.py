"""The training loop: data -> sharded train steps -> metrics, evals and checkpoints."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
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

from flax_bert import checkpoint, losses, ops, workdir as workdir_lib
from flax_bert.config import BertConfig
from flax_bert.data import examples, pipeline, prepare, prepared
from flax_bert.errors import UserError
from flax_bert.model import DROPOUT_IMPLS, REMAT_POLICIES, BertForPreTraining
from flax_bert.training import metrics as metrics_lib
from flax_bert.training import distributed, optimizer, preemption, sharding, state as state_lib, steps

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Train calls the host may dispatch ahead of the devices: enough to keep them busy while the
# host builds the next input; more would only queue input batches in device memory.
CALLS_IN_FLIGHT = 2


def encoder_options(train_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Settings of a BertModel-based model from config.train: compute dtype, remat,
    dropout, attention and layer-loop kernels (pretraining and fine-tuning heads)."""
    return dict(dtype=DTYPES[train_cfg.dtype], remat_policy=train_cfg.remat_policy,
                dropout_impl=train_cfg.dropout_impl, attention_impl=train_cfg.attention_impl,
                scan_layers=ops.scan_layers(train_cfg.scan_layers, train_cfg.remat_policy))


def model_options(train_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """BertForPreTraining's settings from config.train: the encoder's, and the MLM head's
    fused backward passes."""
    return encoder_options(train_cfg) | dict(fused_backward=train_cfg.fused_backward)


def check_choices(config: ml_collections.ConfigDict) -> None:
    """Each choice field that `config` has (config.train's kernels and dtype, the
    optimizer's name and decay) holds one of its values: a UserError naming the field and
    the values otherwise, before anything is prepared or compiled."""
    choices = {
        ("train", "dtype"): tuple(DTYPES),
        ("train", "remat_policy"): ("none", *REMAT_POLICIES),
        ("train", "dropout_impl"): DROPOUT_IMPLS,
        ("train", "attention_impl"): ops.ATTENTION_IMPLS,
        ("train", "scan_layers"): ops.SCAN_LAYERS,
        ("optimizer", "name"): optimizer.NAMES,
        ("optimizer", "decay"): optimizer.DECAYS,
    }
    for (section, field), allowed in choices.items():
        value = config[section].get(field, allowed[0])
        if value not in allowed:
            raise UserError(f"config.{section}.{field}={value!r} is unknown; use one of: "
                            f"{', '.join(allowed)}")


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


def first_batch(batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The first held-out batch; a UserError if there is none."""
    for batch in batches:
        return batch
    raise UserError("the held-out split is empty; raise config.data.eval_fraction")


def evaluate(eval_step: Any, params: Any, batches: Iterable[dict[str, np.ndarray]],
             mesh: Mesh, max_batches: int) -> dict[str, float]:
    """MLM and NSP metrics over the first `max_batches` (0: all) of `batches` (not
    empty: see first_batch), and the number of examples read."""
    totals = None
    for i, local in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        sums = eval_step(params, global_batch(local, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return dict(losses.summarize(totals), examples=float(totals["nsp_count"]))


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


class TrainMeter:
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


class Evaluations:
    """Held-out evaluations: the eval step is compiled in a background thread once the
    first train call is running (the first eval does not wait for a compile), and each
    eval's row is written and printed.

    `metrics(params, final)` evaluates: periodic evals (final=False) may read a subset."""

    def __init__(self, eval_step: Any, params: Any, example: dict[str, np.ndarray],
                 mesh: Mesh, metrics: Callable[[Any, bool], dict[str, float]],
                 writer: metrics_lib.MetricWriter) -> None:
        self.metrics, self.writer = metrics, writer
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

    def compute(self, params: Any, final: bool) -> dict[str, float]:
        self.compile_in_background()
        self._compiled.result()  # jit reuses the compiled executable
        return self.metrics(params, final)

    def write(self, step: int, row: dict[str, float]) -> None:
        self.writer.write(step, row, split="eval")
        say(f"eval step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items()))


def save_and_stop(step: int, stop_after: int, watch: preemption.PreemptionWatch,
                  guard: NonfiniteGuard, ckpt: checkpoint.TrainCheckpointer,
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


def progress_bar(start: int, total: int, enabled: bool) -> Any:
    from tqdm import tqdm
    return tqdm(initial=start, total=total, desc="train", unit="step", disable=not enabled,
                dynamic_ncols=True, mininterval=1.0)


def say(message: str) -> None:
    if jax.process_index() == 0:
        from tqdm import tqdm
        tqdm.write(message)


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
                writer: metrics_lib.MetricWriter, meter: TrainMeter,
                evals: Evaluations, schedule: optax.Schedule,
                log_fields: Callable[[Any], dict[str, float]] = lambda state: {}) -> Any:
    """Runs `train_step` on each call of `feed` from step `begin` to `t.steps`: metric rows
    every `t.log_every` steps (with `log_fields(state)`), evals every `t.eval_every`,
    checkpoints, the stop at `t.stop_after` or on a signal. The host reads device values
    only at log, eval and checkpoint steps, and runs at most CALLS_IN_FLIGHT calls ahead of
    the devices. Returns the final state."""
    writer_process = jax.process_index() == 0
    guard = NonfiniteGuard(int(state.nonfinite_run), t.max_consecutive_nonfinite, ckpt)
    done = begin
    with preemption.PreemptionWatch() as watch, progress_bar(begin, t.steps,
                                                             writer_process) as bar:
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


def final_eval_and_save(step: int, state: Any, rng: jax.Array, feed: DeviceFeed,
                        evals: Evaluations, ckpt: checkpoint.TrainCheckpointer
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


def run_locked(body: Callable[[ml_collections.ConfigDict, str], dict[str, float]],
               config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`body(config, workdir)` after the config's choices are checked, jax.distributed is
    set up and `workdir` is checked and locked (process 0 holds the lock; before anything
    is written)."""
    check_choices(config)
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
        say(f"tokenizing with {pretrained_vocab}")
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
    model = BertForPreTraining(model_config, **model_options(train_cfg))
    tx, schedule = optimizer.make_optimizer(config.optimizer, train_cfg.steps)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))

    ckpt = checkpoint.TrainCheckpointer(workdir, config.checkpoint)
    init_params = None
    if ckpt.latest_step() is None and os.path.isdir(pretrained):
        check_same_model(pretrained, model_config)
        init_params = checkpoint.load_params(pretrained)
        say(f"initialising from {pretrained} (continued pretraining)")
    state, state_shardings = state_lib.create_train_state(
        model, tx, mesh, init_rng, meta["max_seq_length"], params=init_params)

    train_iter = pipeline.make_train_iterator(
        data_dir, data_config, global_batch_size=train_cfg.global_batch_size, seed=config.seed,
        phase1=phase1)
    state, dropout_rng, start = resume(ckpt, state, dropout_rng, train_iter)
    if writer_process:
        model_config.to_json_file(os.path.join(workdir, checkpoint.CONFIG_FILE))
    writer = metrics_lib.MetricWriter(workdir, enabled=writer_process)
    writer.truncate_after(start)

    train_step = steps.jit_train_step(mesh, state_shardings, model=model, tx=tx,
                                      schedule=schedule,
                                      grad_accum_steps=train_cfg.grad_accum_steps)
    eval_step = steps.jit_eval_step(mesh, state_shardings.params, model=model)

    def eval_batches() -> Iterable[dict[str, np.ndarray]]:
        return pipeline.make_eval_iterator(data_dir, data_config,
                                           global_batch_size=train_cfg.global_batch_size)

    def eval_metrics(params: Any, final: bool) -> dict[str, float]:
        return evaluate(eval_step, params, eval_batches(), mesh,
                        train_cfg.final_eval_batches if final else train_cfg.eval_batches)

    evals = Evaluations(eval_step, state.params, first_batch(eval_batches()), mesh,
                        eval_metrics, writer)
    if phase1 and start < phase1.steps:
        say(f"phase 1: steps 1-{phase1.steps} on {train_cfg.phase1_seq_length}-token examples "
            f"({phase1.prepared_dir}), then {meta['max_seq_length']}-token examples")
    feed = DeviceFeed(train_iter, call_sizes(
        start, train_cfg.steps, train_cfg.steps_per_call,
        every=(train_cfg.log_every, train_cfg.eval_every, ckpt.every),
        at=(phase1.steps if phase1 else 0, train_cfg.stop_after)), mesh)
    state = train_calls(state, dropout_rng, start, feed, train_step, t=train_cfg, ckpt=ckpt,
                        writer=writer, meter=TrainMeter(), evals=evals, schedule=schedule,
                        log_fields=lambda s: {"param_norm": float(_global_norm(s.params))})
    final = final_eval_and_save(train_cfg.steps, state, dropout_rng, feed, evals, ckpt)
    if writer_process:
        for path in metrics_lib.plot_curves(workdir):
            say(f"wrote {path}")
    writer.close()
    return final
