"""The training loop: data -> sharded train steps -> metrics, evals and checkpoints."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from flax_bert import checkpoint, losses
from flax_bert.config import BertConfig
from flax_bert.data import pipeline, prepare
from flax_bert.errors import UserError
from flax_bert.model import BertForPreTraining
from flax_bert.training import metrics as metrics_lib
from flax_bert.training import distributed, optimizer, sharding, state as state_lib, steps

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
VOCAB_FILE = "vocab.txt"
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


def model_config_for(config: ml_collections.ConfigDict, meta: dict) -> BertConfig:
    """The run's BertConfig: vocab size from the prepared data, checked against it."""
    fields = config.model.to_dict()
    if fields["vocab_size"] == 0:
        fields["vocab_size"] = meta["vocab_size"]
    elif fields["vocab_size"] != meta["vocab_size"]:
        raise UserError(
            f"the data's vocab has {meta['vocab_size']} tokens but config.model.vocab_size is "
            f"{fields['vocab_size']}; set --config.model.vocab_size={meta['vocab_size']} (or 0)")
    try:
        model_config = BertConfig(**fields)
    except (TypeError, ValueError) as e:
        raise UserError(f"config.model: {e}") from e
    if meta["max_seq_length"] > model_config.max_position_embeddings:
        raise UserError(
            f"config.data.max_seq_length ({meta['max_seq_length']}) exceeds "
            f"config.model.max_position_embeddings ({model_config.max_position_embeddings})")
    return model_config


def check_same_model(workdir: str, model_config: BertConfig) -> None:
    """A workdir trains one model: refuses to continue it with another architecture."""
    path = os.path.join(workdir, checkpoint.CONFIG_FILE)
    if not os.path.exists(path):
        return
    saved = checkpoint.load_config(workdir)
    for field in dataclasses.fields(BertConfig):
        old, new = getattr(saved, field.name), getattr(model_config, field.name)
        if old != new:
            raise UserError(
                f"{path} has {field.name}={old!r} but the config asks for {new!r}; "
                f"use the workdir's model config or a new --workdir")


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays split over the mesh's data x fsdp axes."""
    spec = sharding.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(spec, v) for k, v in local.items()}


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


class _TrainMeter:
    """Sums step metrics on device between log points; one host sync per log row."""

    def __init__(self) -> None:
        self.totals: dict[str, jax.Array] | None = None
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, jax.Array]) -> None:
        self.totals = metrics if self.totals is None else jax.tree.map(
            jnp.add, self.totals, metrics)
        self.steps += 1

    def summary(self, tokens_per_step: int) -> dict[str, float]:
        totals = jax.device_get(self.totals)
        elapsed = time.perf_counter() - self.start
        row = losses.summarize({k: totals[k] for k in SUM_KEYS})
        for key in ("grad_norm", "param_norm", "update_norm"):
            row[key] = float(totals[key]) / self.steps
        row["skipped"] = float(totals["skipped"])
        row["tokens_per_sec"] = tokens_per_step * self.steps / elapsed
        row["steps_per_sec"] = self.steps / elapsed
        self.__init__()
        return row


def _progress(start: int, total: int, enabled: bool) -> Iterator[int]:
    if not enabled:
        return iter(range(start, total))
    from tqdm import tqdm
    return iter(tqdm(range(start, total), initial=start, total=total, desc="train",
                     dynamic_ncols=True, mininterval=1.0))


def _say(message: str) -> None:
    if jax.process_index() == 0:
        from tqdm import tqdm
        tqdm.write(message)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) pretraining in `workdir`; returns the final eval metrics."""
    distributed.maybe_initialize(config.distributed)
    workdir = check_workdir(workdir)
    writer_process = jax.process_index() == 0
    train_cfg = config.train

    # Data: prepared once (cached in the workdir unless data.prepared_dir is given).
    # Continued pretraining of an imported model tokenizes with that model's vocab.
    pretrained = os.path.join(workdir, checkpoint.PRETRAINED_DIR)
    pretrained_vocab = os.path.join(pretrained, VOCAB_FILE)
    data_config = ml_collections.ConfigDict(config.data)
    if not data_config.vocab and os.path.isfile(pretrained_vocab):
        data_config.vocab = pretrained_vocab
        _say(f"tokenizing with {pretrained_vocab}")
    data_dir = data_config.prepared_dir or os.path.join(workdir, "data")
    if writer_process:
        prepare.prepare_from_config(data_config, data_dir)
        shutil.copyfile(os.path.join(data_dir, VOCAB_FILE), os.path.join(workdir, VOCAB_FILE))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("data prepared")
    meta = pipeline.load_meta(data_dir)
    model_config = model_config_for(config, meta)
    check_same_model(workdir, model_config)

    if train_cfg.global_batch_size % (jax.process_count() * train_cfg.grad_accum_steps):
        raise UserError(f"config.train.global_batch_size ({train_cfg.global_batch_size}) must "
                        f"divide by processes x grad_accum_steps")
    mesh = sharding.make_mesh(config.mesh)
    model = BertForPreTraining(model_config, dtype=DTYPES[train_cfg.dtype],
                               remat_policy=train_cfg.remat_policy)
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
        data_dir, data_config, global_batch_size=train_cfg.global_batch_size, seed=config.seed)
    state, restored_step = ckpt.restore(state, train_iter)
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

    tokens_per_step = train_cfg.global_batch_size * meta["max_seq_length"]
    meter = _TrainMeter()
    for step in _progress(start, train_cfg.steps, writer_process):
        batch = global_batch(next(train_iter), mesh)
        state, step_metrics = train_step(state, batch, dropout_rng)
        meter.add(step_metrics)
        done = step + 1
        if done % train_cfg.log_every == 0 or done == train_cfg.steps:
            row = meter.summary(tokens_per_step)
            row["learning_rate"] = float(schedule(step))
            writer.write(done, row)
            if int(state.nonfinite_run) >= train_cfg.max_consecutive_nonfinite:
                ckpt.close()
                raise UserError(
                    f"loss or gradients were not finite for {int(state.nonfinite_run)} "
                    f"consecutive steps (at step {done}); the last good checkpoint is kept "
                    f"in {ckpt.directory}; lower config.optimizer.learning_rate")
        if train_cfg.eval_every and done % train_cfg.eval_every == 0 and done < train_cfg.steps:
            run_eval(done)
        ckpt.save(done, state, train_iter)

    final = run_eval(train_cfg.steps)
    if ckpt.latest_step() != train_cfg.steps:
        ckpt.save(train_cfg.steps, state, train_iter, force=True)
    ckpt.close()
    if writer_process:
        for path in metrics_lib.plot_curves(workdir):
            _say(f"wrote {path}")
    writer.close()
    return final
