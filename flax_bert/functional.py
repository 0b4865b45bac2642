"""BERT as pure functions of (params, batch, key) and a frozen config, without Linen.

    params = functional.init(config, jax.random.key(0))
    seq, pooled = functional.encode(params, batch, config=config)      # [B, S, H], [B, H]
    loss, sums = functional.pretraining_loss(params, batch, key, config=config)

`config` is a frozen, hashable `BertConfig`: a static argument of `jax.jit`. Nothing else
is hidden, so `jax.grad`, `jax.vmap` (per-example gradients: vmap over examples, each given
a batch axis of one) and `jax.checkpoint` compose with all three, and `jax.jvp` with
`encode`. `pretraining_loss` uses the train step's hand-written VJPs of the MLM decoder and
the cross-entropy (flax_bert/ops.py), which have no forward mode: pass
`fused_backward=False` for `jax.jvp` / `jax.jacfwd` (the plain forms, the same numbers).

Keywords choose how the model computes, with the defaults of the Linen modules and of
configs/default.py: `dtype` (compute dtype; params stay float32), `dropout_impl` ("hash" |
"jax", see `model.Dropout`), `remat_policy` and `fused_backward`. Pass a run's `config.train` values to get
its numbers. Dropout is on when a key is given and off when `rng` is None. The train step
at step t draws its dropout from `steps.dropout_key(rng, t)`, so its loss is
`pretraining_loss(state.params, batch, steps.dropout_key(rng, state.step), config=...)`.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_bert import losses
from flax_bert.config import BertConfig
from flax_bert.model import BertForPreTraining, BertModel
from flax_bert.training import steps
from flax_bert.training.state import example_inputs

Array = jax.Array
Batch = Mapping[str, Array]
Params = Any
Dtype = Any


def init(config: BertConfig, rng: Array) -> Params:
    """Fresh float32 params of `BertForPreTraining(config)`: `bert` (encoder), `cls` (heads).
    The train loop's initial params for the same key."""
    return nn.unbox(BertForPreTraining(config).init(rng, *example_inputs(1))["params"])


def encode(params: Params, batch: Batch, *, config: BertConfig, rng: Array | None = None,
           dtype: Dtype = jnp.float32, dropout_impl: str = "hash",
           remat_policy: str = "none") -> tuple[Array, Array]:
    """(sequence [B, S, H], pooled [B, H]) of `input_ids`, `token_type_ids`,
    `attention_mask` [B, S], with `params["bert"]`."""
    model = BertModel(config, dtype, remat_policy, dropout_impl)
    return model.apply({"params": params["bert"]}, batch["input_ids"], batch["token_type_ids"],
                       batch["attention_mask"], deterministic=rng is None,
                       rngs=None if rng is None else {"dropout": rng})


def pretraining_loss(params: Params, batch: Batch, rng: Array | None, *, config: BertConfig,
                     dtype: Dtype = jnp.float32, dropout_impl: str = "hash",
                     remat_policy: str = "none", fused_backward: bool = True
                     ) -> tuple[Array, dict[str, Array]]:
    """(mean MLM loss + mean NSP loss, the sums of `losses.pretraining_metrics`) on a
    pretraining batch (`train.py`'s keys: masked_positions, masked_ids, ...)."""
    model = BertForPreTraining(config, dtype, remat_policy, dropout_impl, fused_backward)
    sums = steps.forward_sums(model, params, batch, deterministic=rng is None, dropout_rng=rng)
    return losses.total_loss(sums), sums
