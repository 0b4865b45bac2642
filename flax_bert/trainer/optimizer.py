"""optax optimizer: warmup + decay schedule, AdamW or LAMB, decay mask, clipping."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flax_bert.errors import UserError
from flax_bert.layers import LAYERS

NAMES = ("adamw", "lamb")  # config.optimizer.name values
DECAYS = ("linear", "cosine", "constant")  # config.optimizer.decay values


def check(opt: ml_collections.ConfigDict) -> None:
    """config.optimizer's name and decay are known ones (a UserError otherwise)."""
    for field, allowed in (("name", NAMES), ("decay", DECAYS)):
        if opt[field] not in allowed:
            raise UserError(f"config.optimizer.{field}={opt[field]!r} is unknown; use one "
                            f"of: {', '.join(allowed)}")


def make_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then linear/cosine decay (or constant)."""
    peak, warmup = opt.learning_rate, opt.warmup_steps
    end = peak * opt.end_lr_fraction
    decay_steps = max(total_steps - warmup, 1)
    if opt.decay == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif opt.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.end_lr_fraction)
    else:  # constant
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


# Parameter names that weight decay skips: biases and LayerNorm scales (google-research/bert
# excludes "bias" and "LayerNorm"; our LayerNorm's other parameter is its bias).
NO_DECAY = ("bias", "scale")


def decay_mask(params: Any) -> Any:
    """Weight decay applies to kernels and embeddings, not to biases or LayerNorm scales.
    By name, not by rank: the encoder's stacked layers make a bias [L, H]."""
    def decayed(path: tuple, _: Any) -> bool:
        return _names(path)[-1] not in NO_DECAY
    return jax.tree_util.tree_map_with_path(decayed, params)


def _names(path: tuple) -> list[str]:
    return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]


def scale_by_layerwise_trust_ratio() -> optax.GradientTransformation:
    """LAMB's trust ratio ||param|| / ||update|| (optax.scale_by_trust_ratio: 1 where either
    is 0) per tensor, where each row of the encoder's stacked layers (`layers/...`, [L, ...])
    is its own tensor, as it is in the paper's unrolled model."""

    def update_fn(updates: Any, state: optax.EmptyState, params: Any) -> tuple[Any, Any]:
        def scale(path: tuple, update: jax.Array, param: jax.Array) -> jax.Array:
            axes = tuple(range(1, param.ndim)) if LAYERS in _names(path) else None
            param_norm = jnp.sqrt(jnp.sum(jnp.square(param), axis=axes, keepdims=True))
            update_norm = jnp.sqrt(jnp.sum(jnp.square(update), axis=axes, keepdims=True))
            ratio = jnp.where((param_norm == 0) | (update_norm == 0), 1.0,
                              param_norm / update_norm)
            return update * ratio.astype(update.dtype)
        return jax.tree_util.tree_map_with_path(scale, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(opt: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(the optimizer of config.optimizer `opt`, its learning-rate schedule)."""
    check(opt)
    schedule = make_schedule(opt, total_steps)
    if opt.name == "adamw":
        core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=decay_mask)
    else:  # lamb
        core = optax.chain(  # optax.lamb, with the trust ratio per layer
            optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
            optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
            scale_by_layerwise_trust_ratio(),
            optax.scale_by_learning_rate(schedule))
    if opt.grad_clip_norm > 0:
        core = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), core)
    return core, schedule
