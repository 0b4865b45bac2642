"""optax optimizer: warmup + decay schedule, AdamW or LAMB, decay mask, clipping."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def make_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then linear/cosine decay (or constant)."""
    peak, warmup = opt.learning_rate, opt.warmup_steps
    end = peak * opt.end_lr_fraction
    decay_steps = max(total_steps - warmup, 1)
    if opt.decay == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif opt.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.end_lr_fraction)
    elif opt.decay == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"config.optimizer.decay {opt.decay!r} is unknown; "
                         "use linear, cosine or constant")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
    """Weight decay applies to matrices only: LayerNorm scales and biases are 1-D."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(opt, total_steps)
    if opt.name == "adamw":
        core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=decay_mask)
    elif opt.name == "lamb":
        core = optax.lamb(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                          weight_decay=opt.weight_decay, mask=decay_mask)
    else:
        raise ValueError(f"config.optimizer.name {opt.name!r} is unknown; use adamw or lamb")
    if opt.grad_clip_norm > 0:
        core = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), core)
    return core, schedule
