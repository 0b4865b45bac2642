"""A downstream run's length and warmup from its data (GLUE, SQuAD): config.train.steps, or
config.train.epochs over the train set; config.optimizer.warmup_fraction of the steps."""

from __future__ import annotations

import math

import ml_collections


def for_data(config: ml_collections.ConfigDict, train_size: int,
             learning_rate: float | None = None) -> ml_collections.ConfigDict:
    """A copy of `config` for one run on `train_size` train examples: train.steps set
    (when 0: train.epochs x train_size / train.global_batch_size, rounded up),
    optimizer.warmup_steps (optimizer.warmup_fraction of the steps, rounded) and, when
    given, optimizer.learning_rate."""
    t, o = config.train, config.optimizer  # their ranges: flax_bert/config_ranges.py
    out = ml_collections.ConfigDict(config.to_dict())
    steps = t.steps or max(1, math.ceil(t.epochs * train_size / t.global_batch_size))
    out.train.steps = steps
    out.optimizer.warmup_steps = round(o.warmup_fraction * steps)
    if learning_rate is not None:
        out.optimizer.learning_rate = learning_rate
    return out
