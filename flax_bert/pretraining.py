"""The pretraining job (MLM + NSP): its model, optimizer, data and metrics, run on the engine.

    python train.py --config configs/X.py --workdir DIR     (train.py calls train_and_evaluate)

A run folder that holds a model (a trained one's config.json, or one imported into
`pretrained/` with `python -m flax_bert.hf import`) fixes the architecture: the run
continues that model, tokenizing with an imported model's vocab.
"""

from __future__ import annotations

import os
from typing import Any, Collection, Iterable

import jax
import jax.numpy as jnp
import ml_collections

from flax_bert import checkpoint, losses, workdir as workdir_lib
from flax_bert.compute import Compute
from flax_bert.config import BertConfig
from flax_bert.data import inputs, options as data_options
from flax_bert.data.options import DataOptions
from flax_bert.errors import UserError
from flax_bert.model import BertForPreTraining
from flax_bert.training import checks, engine, metrics as metrics_lib, monitor, optimizer, steps

SUM_KEYS = ("mlm_loss_sum", "mlm_correct", "mlm_count",
            "nsp_loss_sum", "nsp_correct", "nsp_count")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       explicit_model_fields: Collection[str] | None = None) -> dict[str, float]:
    """Runs (or resumes) pretraining in `workdir`; returns the final eval metrics.
    `explicit_model_fields`: the config.model fields the user set (train.py passes its
    --config.model.* flags); None: all of them (see checks.model_config)."""
    return engine.run_locked(
        lambda c, w: _pretrain(c, w, explicit_model_fields), config, workdir)


def _pretrain(config: ml_collections.ConfigDict, workdir: str,
              explicit: Collection[str] | None) -> dict[str, float]:
    t, paths = config.train, workdir_lib.Paths(workdir)
    saved_in = model_folder(paths)
    stand_in = checks.read_model_config(saved_in).vocab_size if saved_in else 1
    checks.model_config(config.model, stand_in, config.data.max_seq_length, saved_in,
                        explicit)  # a config mistake, before data is prepared
    options = DataOptions.from_config(config.data)
    imported_vocab = os.path.join(paths.pretrained, workdir_lib.VOCAB_FILE)
    if not options.vocab and os.path.isfile(imported_vocab):
        options = options.replace(vocab=imported_vocab)
        monitor.say(f"tokenizing with {imported_vocab}")
    phase1 = phase1_steps(config)
    data = inputs.pretraining_data(options, paths.prepared, phase1_steps=phase1,
                                   phase1_seq_length=t.phase1_seq_length,
                                   phase1_batch_size=t.phase1_batch_size)
    model_config = checks.model_config(config.model, data.meta["vocab_size"],
                                       data.seq_length, saved_in, explicit)
    check_vocab(model_config, data.meta["vocab_size"])
    checks.check_batch(config, ("global_batch_size",) + (("phase1_batch_size",) if phase1
                                                         else ()), jax.process_count())
    if phase1 and not os.path.isdir(paths.checkpoints):
        monitor.say(f"phase 1: steps 1-{phase1} on {t.phase1_seq_length}-token examples "
                    f"({data.phase1.prepared_dir}), then {data.seq_length}-token examples")
    return engine.run(job(config, model_config, data, paths), config, workdir)


def job(config: ml_collections.ConfigDict, model_config: BertConfig,
        data: inputs.PretrainingData, paths: workdir_lib.Paths) -> engine.Job:
    """Pretraining's part of a run: BertForPreTraining, its optimizer, data and metrics."""
    t = config.train
    model = BertForPreTraining(model_config, Compute.from_config(t))
    tx, schedule = optimizer.make_optimizer(config.optimizer, t.steps)

    def write_files() -> None:
        workdir_lib.install_vocab(data.vocab, paths)
        model_config.to_json_file(paths.config)

    def imported() -> dict:
        monitor.say(f"initialising from {paths.pretrained} (continued pretraining)")
        return checkpoint.load_params(paths.pretrained)

    def evaluate(eval_on: Any, final: bool, batches: Iterable) -> dict[str, float]:
        """MLM and NSP metrics over the first eval_batches (final: final_eval_batches; 0:
        all) held-out batches, and the number of examples read."""
        limit, totals = t.final_eval_batches if final else t.eval_batches, None
        for i, local in enumerate(batches):
            if limit and i >= limit:
                break
            sums = eval_on(local)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        return dict(losses.summarize(totals), examples=float(totals["nsp_count"]))

    return engine.Job(
        model=model, seq_length=data.seq_length, tx=tx, schedule=schedule,
        train_step=steps.train_step, eval_step=steps.eval_step,
        step_kwargs=dict(grad_accum_steps=t.grad_accum_steps),
        train_iter=data.train_iterator(t.global_batch_size, config.seed),
        eval_batches=lambda: data.eval_batches(t.global_batch_size), evaluate=evaluate,
        summarize=lambda totals: losses.summarize({k: totals[k] for k in SUM_KEYS}),
        plots=metrics_lib.PRETRAINING_PLOTS,
        init_params=imported if os.path.isdir(paths.pretrained) else None,
        log_fields=lambda state: {"param_norm": float(monitor.global_norm(state.params))},
        boundaries=(data.phase1.steps,) if data.phase1 else (),
        write_files=write_files)


def model_folder(paths: workdir_lib.Paths) -> str | None:
    """The folder whose config.json fixes the run's model: the run folder once it has
    trained, else an imported model's; None for a new model of config.model."""
    for folder in (paths.root, paths.pretrained):
        if os.path.isfile(os.path.join(folder, workdir_lib.CONFIG_FILE)):
            return folder
    return None


def check_vocab(model_config: BertConfig, data_vocab_size: int) -> None:
    """The data's token ids must be the model's."""
    if model_config.vocab_size != data_vocab_size:
        raise UserError(
            f"the data's vocab has {data_vocab_size} tokens but config.model.vocab_size is "
            f"{model_config.vocab_size}; set --config.model.vocab_size={data_vocab_size} "
            f"(or 0: take the data's), or tokenize with the model's vocab (config.data.vocab)")


def phase1_steps(config: ml_collections.ConfigDict) -> int:
    """Validates the phase-1 fields; returns phase 1's step count (0: one phase)."""
    return data_options.phase1_steps(config.train, config.data.max_seq_length)
