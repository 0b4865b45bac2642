"""What every fine-tuning job (classification, a GLUE task, SQuAD) hands the engine alike:
the start's encoder, the optimizer over the run's steps, shuffled train batches, ordered
eval batches (this process's rows) and the run folder's files. The job brings its model,
arrays, loss, eval step, metrics and export."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from flax_bert.config import BertConfig
from flax_bert.tasks import (example_batches as batches, model_start as start_lib,
                             finetune_steps as ft_steps)
from flax_bert.trainer import loop as engine, optimizer
from flax_bert.trainer.run_folder import Paths


def eval_batches(config: ml_collections.ConfigDict,
                 arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """This process's share of the eval batches (config.train.eval_batch_size) of arrays."""
    return batches.eval_batches(arrays, config.train.eval_batch_size, jax.process_index(),
                                jax.process_count())


def make_job(config: ml_collections.ConfigDict, paths: Paths, start: start_lib.Start,
             model_config: BertConfig, labels: list[str], model: nn.Module, *,
             train_arrays: dict[str, np.ndarray], eval_arrays: dict[str, np.ndarray],
             loss: ft_steps.Loss, eval_step: Callable, evaluate: Callable,
             plots: tuple, export: Callable[[Any], None]) -> engine.Job:
    """The engine.Job of a fine-tuning run of config.train.steps in the run folder `paths`
    (config.json, vocab.txt and finetune.json with `labels` written there)."""
    t = config.train
    tx, schedule = optimizer.make_optimizer(config.optimizer, t.steps)
    return engine.Job(
        model=model, seq_length=config.data.max_seq_length, tx=tx, schedule=schedule,
        train_step=ft_steps.train_step, eval_step=eval_step, step_kwargs={"loss": loss},
        train_iter=batches.make_train_iterator(train_arrays, t.global_batch_size, config.seed,
                                               jax.process_index(), jax.process_count()),
        eval_batches=lambda: eval_batches(config, eval_arrays),
        evaluate=evaluate, summarize=ft_steps.summarize_train, plots=plots,
        init_params=None if start.encoder is None else lambda: {"bert": start.encoder},
        write_files=lambda: start_lib.write_run_files(paths, start, model_config, labels),
        finish=export)
