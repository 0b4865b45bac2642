"""BERT as pure functions of (params, batch, key) and a frozen config, without Linen.

    params = functional.init(config, jax.random.key(0))
    seq, pooled = functional.encode(params, batch, config=config)      # [B, S, H], [B, H]
    loss, sums = functional.pretraining_loss(params, batch, key, config=config)

A batch may hold packed rows (several sentence pairs a row: `position_ids`, `pair_ids`,
`cls_positions`, `pair_weights`; see flax_bert/model.py): then pooled is [B, K, H] and
the NSP loss a mean over the pairs.

`config` is a frozen, hashable `BertConfig`: a static argument of `jax.jit`. Nothing else
is hidden, so `jax.grad`, `jax.vmap` (per-example gradients: vmap over examples, each given
a batch axis of one) and `jax.checkpoint` compose with all three, and `jax.jvp` with
`encode`. `pretraining_loss` uses the train step's hand-written VJPs of the MLM decoder and
the cross-entropy (flax_bert/ops.py), which have no forward mode: pass
`compute=Compute(fused_backward=False)` for `jax.jvp` / `jax.jacfwd` (the plain forms, the
same numbers).

`compute` chooses how the model computes (`flax_bert.compute.Compute`: dtype, remat, the
dropout and attention kernels, the layer loop, the fused backward passes), with the
defaults of configs/default.py; `Compute.from_config(config.train)` gives a run's, and its
numbers. Dropout is on when a key is given and off when `rng` is None. The train step
at step t draws its dropout from `flax_bert.trainer.step.dropout_key(rng, t)`, so its loss is
`pretraining_loss(state.params, batch, steps.dropout_key(rng, state.step), config=...)`.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax

from flax_bert import losses
from flax_bert.losses import forward_sums
from flax_bert.compute import Compute
from flax_bert.config import BertConfig
from flax_bert.model import BertForPreTraining, BertModel, example_inputs, packed_inputs

Array = jax.Array
Batch = Mapping[str, Array]
Params = Any


def init(config: BertConfig, rng: Array) -> Params:
    """Fresh float32 params of `BertForPreTraining(config)`: `bert` (encoder), `cls` (heads).
    The train loop's initial params for the same key."""
    return nn.unbox(BertForPreTraining(config).init(rng, *example_inputs(1))["params"])


def encode(params: Params, batch: Batch, *, config: BertConfig, rng: Array | None = None,
           compute: Compute = Compute()) -> tuple[Array, Array]:
    """(sequence [B, S, H], pooled [B, H]) of `input_ids`, `token_type_ids`,
    `attention_mask` [B, S] (and packed rows' inputs: pooled [B, K, H]), with
    `params["bert"]`."""
    model = BertModel(config, compute)
    return model.apply({"params": params["bert"]}, batch["input_ids"], batch["token_type_ids"],
                       batch["attention_mask"], deterministic=rng is None,
                       **packed_inputs(batch),
                       rngs=None if rng is None else {"dropout": rng})


def pretraining_loss(params: Params, batch: Batch, rng: Array | None, *, config: BertConfig,
                     compute: Compute = Compute()) -> tuple[Array, dict[str, Array]]:
    """(mean MLM loss + mean NSP loss, the sums of `losses.pretraining_metrics`) on a
    pretraining batch (`train.py`'s keys: masked_positions, masked_ids, ...)."""
    model = BertForPreTraining(config, compute)
    sums = forward_sums(model, params, batch, deterministic=rng is None, dropout_rng=rng)
    return losses.total_loss(sums), sums
