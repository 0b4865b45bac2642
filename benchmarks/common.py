"""Shared by the benchmarks: config loading, a synthetic batch, our jit'd train step."""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from flax_bert import BertConfig, BertForPreTraining
from flax_bert.compute import Compute
from flax_bert.tasks.pretraining import PretrainingObjective
from flax_bert.trainer import feed, optimizer, sharding, state as state_lib, step as steps


BERT_VOCAB_SIZE = 30522  # Without prepared data, the size files' vocab is BERT's own.


def load_config(name: str, overrides: list[str]) -> ml_collections.ConfigDict:
    config = importlib.import_module(f"configs.{name}").get_config()
    config.model.vocab_size = config.model.vocab_size or BERT_VOCAB_SIZE
    for item in overrides:
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else (
            value.lower() in ("1", "true", "yes"))
    return config


def model_flops(cfg: BertConfig, batch: int, seq: int, preds: int,
                decoder_positions: int | None = None) -> float:
    """FLOPs of one train step (forward + backward = 3 x forward, 2 per multiply-add):
    encoder matmuls, attention scores and context, the MLM head at `preds` positions per
    example (HF's at all `decoder_positions`), pooler + NSP. Gathers, LayerNorm, GELU,
    softmax, dropout and the optimizer are not counted (benchmarks/train_step.py)."""
    h, i, layers, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    tokens = batch * seq
    encoder = 6 * (4 * h * h + 2 * h * i) * layers * tokens
    attention = 6 * 2 * seq * h * layers * tokens
    head_tokens = batch * (preds if decoder_positions is None else decoder_positions)
    mlm = 6 * (h * h + h * v) * head_tokens
    nsp = 6 * (h * h + 2 * h) * batch
    return float(encoder + attention + mlm + nsp)


def make_batch(cfg: BertConfig, batch: int, seq: int, preds: int,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random full-length pairs with `preds` distinct masked positions per example."""
    ids = rng.integers(1000, cfg.vocab_size, (batch, seq)).astype(np.int32)  # [B, S]
    types = (np.arange(seq)[None, :] >= seq // 2).astype(np.int32).repeat(batch, 0)  # [B, S]
    positions = np.sort(np.stack([rng.choice(np.arange(1, seq), preds, replace=False)
                                  for _ in range(batch)]), axis=1).astype(np.int32)  # [B, P]
    return {
        "input_ids": ids, "token_type_ids": types, "attention_mask": np.ones_like(ids),
        "masked_positions": positions,
        "masked_ids": np.take_along_axis(ids, positions, axis=1),  # [B, P]
        "masked_weights": np.ones((batch, preds), np.float32),
        "next_sentence_label": rng.integers(0, 2, (batch,)).astype(np.int32),
    }


class Parts(NamedTuple):
    """What a train step is built from, as training builds it."""

    model: BertForPreTraining
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh
    state: Any  # TrainState
    shardings: Any


def build_parts(config: ml_collections.ConfigDict, seq: int) -> Parts:
    """Model, optimizer and a fresh TrainState on a 1-device mesh, built from `config`
    exactly as training does (model dtype, remat policy and dropout from config.train)."""
    cfg = BertConfig(**config.model.to_dict())
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}),
                              jax.devices()[:1])
    model = BertForPreTraining(cfg, Compute.from_config(config.train))
    tx, schedule = optimizer.make_optimizer(config.optimizer, config.train.steps)
    state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(0), seq)
    return Parts(model, tx, schedule, mesh, state, shardings)


def build_step(config: ml_collections.ConfigDict, batch_np: dict[str, np.ndarray],
               seq: int) -> tuple[Callable, Any, dict[str, jax.Array]]:
    """(jit'd train call, fresh TrainState, device batches), see `build_parts`. A call
    runs config.train.steps_per_call steps, all on `batch_np` (stacked that many times)."""
    parts = build_parts(config, seq)
    step = steps.jit_train_step(parts.mesh, parts.shardings,
                                objective=PretrainingObjective(parts.model), tx=parts.tx,
                                schedule=parts.schedule)
    stacked = feed.stack_batches([batch_np] * config.train.steps_per_call)
    return step, parts.state, jax.device_put(
        stacked, sharding.batch_sharding(parts.mesh, stacked=True))
