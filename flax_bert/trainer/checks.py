"""Checks a run makes before it writes anything: the config's choices, the run folder, and
the model it may train there. Each failure is one UserError naming the field and the fix."""

from __future__ import annotations

import dataclasses
import os
from typing import Collection

import ml_collections

from flax_bert import config_ranges
from flax_bert.compute import Compute
from flax_bert.config import BertConfig
from flax_bert.errors import UserError
from flax_bert.trainer import checkpoint, optimizer
from flax_bert.trainer.run_folder import Paths

# BertConfig fields that shape training but not the parameters: a run may change them.
TRAINING_ONLY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob",
                        "initializer_range")


def check_config(config: ml_collections.ConfigDict) -> Compute:
    """Every numeric field's range (config_ranges), config.train's and config.optimizer's
    choices, before anything is prepared or a device is used; returns the run's Compute."""
    config_ranges.check(config)
    compute = Compute.from_config(config.train)
    optimizer.check(config.optimizer)
    return compute


def check_workdir(workdir: str) -> str:
    """The absolute run folder, created if needed; a file, or no way to write, is an error."""
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


def read_model_config(path: str) -> BertConfig | None:
    """The BertConfig of the config.json in folder `path`, or None without one."""
    if not os.path.exists(os.path.join(path, "config.json")):
        return None
    try:
        return checkpoint.load_config(path)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{path}/config.json cannot be read ({e}); restore it or use a new "
                        f"--workdir") from e


def model_config(model: ml_collections.ConfigDict, vocab_size: int, max_seq_length: int,
                 saved_in: str | None = None,
                 explicit: Collection[str] | None = None) -> BertConfig:
    """The model a run trains, validated.

    `model` is config.model (vocab_size 0: `vocab_size`, the data's), unless the folder
    `saved_in` holds a model (a config.json): then that model, but for the `explicit`
    fields of `model` (None: all of them), which may change what does not shape the
    parameters (dropout, init range); an explicit field that contradicts the saved model
    is a UserError.
    """
    fields = model.to_dict()
    saved = read_model_config(saved_in) if saved_in else None
    if saved is None:
        fields["vocab_size"] = fields["vocab_size"] or vocab_size
    else:
        given = set(fields) if explicit is None else set(explicit) & set(fields)
        if not fields["vocab_size"]:  # 0: the data's, which must be the saved model's
            given.discard("vocab_size")
        for name, old, new in contradictions(saved, {name: fields[name] for name in given}):
            raise UserError(
                f"{Paths(saved_in).config} has {name}={old!r} but the config asks for "
                f"{new!r}; drop --config.model.{name} (the folder's model is the one trained) "
                f"or use a new --workdir")
        fields = dataclasses.asdict(saved) | {name: fields[name] for name in given
                                              if name in TRAINING_ONLY_FIELDS}
    try:
        config = BertConfig(**fields)
    except (TypeError, ValueError) as e:
        raise UserError(f"config.model: {e}") from e
    check_positions(config, max_seq_length)
    return config


def check_positions(model_config: BertConfig, max_seq_length: int) -> None:
    """config.data.max_seq_length fits the model's position embeddings."""
    if max_seq_length > model_config.max_position_embeddings:
        raise UserError(
            f"config.data.max_seq_length ({max_seq_length}) exceeds the model's "
            f"max_position_embeddings ({model_config.max_position_embeddings}); lower one or "
            f"raise the other")


def check_same_model(path: str, model_config: BertConfig) -> None:
    """A run folder trains one model: refuses to continue it with another architecture.
    Dropout and init range may change (continued pretraining often changes dropout)."""
    saved = read_model_config(path)
    if saved is None:
        return
    for name, old, new in contradictions(saved, dataclasses.asdict(model_config)):
        raise UserError(f"{Paths(path).config} has {name}={old!r} but the config asks for "
                        f"{new!r}; use the workdir's model config or a new --workdir")


def contradictions(saved: BertConfig, fields: dict) -> list[tuple[str, object, object]]:
    """(name, saved value, asked value) of each field of `fields` that shapes the
    parameters (not TRAINING_ONLY_FIELDS) and differs from the saved model's, by name."""
    return [(name, getattr(saved, name), fields[name]) for name in sorted(fields)
            if name not in TRAINING_ONLY_FIELDS and fields[name] != getattr(saved, name)]


def check_batch(config: ml_collections.ConfigDict, fields: tuple[str, ...],
                process_count: int) -> None:
    """The one check of the batch sizes: each config.train batch-size field in `fields`
    divides by processes x grad_accum_steps (eval_batch_size: by the processes)."""
    t = config.train
    for field in fields:
        per = process_count * (1 if field == "eval_batch_size" else t.grad_accum_steps)
        if t[field] % per:
            raise UserError(f"config.train.{field} ({t[field]}) must divide by processes x "
                            f"grad_accum_steps ({process_count} x {t.grad_accum_steps}); "
                            f"pick a multiple of {per}")
