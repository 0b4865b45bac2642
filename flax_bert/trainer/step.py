"""The pure train and eval steps, and their jit-compiled, sharded forms."""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from flax_bert.losses import forward_sums
from flax_bert.trainer import sharding
from flax_bert.trainer.state import TrainState

Array = jax.Array
Batch = Mapping[str, Array]

def real_tokens(batch: Batch) -> Array:
    """float32 []: the batch's non-padding tokens (the sum of its attention_mask)."""
    return jnp.sum(batch["attention_mask"].astype(jnp.float32))


def num_pairs(batch: Batch) -> Array:
    """float32 []: the batch's sentence pairs: the sum of pair_weights (packed rows), else
    its rows."""
    if "pair_weights" in batch:
        return jnp.sum(batch["pair_weights"].astype(jnp.float32))
    return jnp.float32(batch["next_sentence_label"].shape[0])


def batch_counts(batch: Batch) -> dict[str, Array]:
    """What a train row's tokens_per_sec, padding_fraction and pairs_per_step count
    (monitor.TrainMeter): the batch's real tokens and sentence pairs, on device."""
    return {"real_tokens": real_tokens(batch), "pairs": num_pairs(batch)}


def dropout_key(rng: Array, step: Array) -> Array:
    """The dropout key of optimizer step `step`: `rng` folded with the step."""
    return jax.random.fold_in(rng, step)


def _split_micro_batches(batch: Batch, num: int) -> Batch:
    """[B, ...] -> [num, B / num, ...]; micro-batch i takes rows i, i + num, ... so each
    device's contiguous rows are spread evenly over the micro-batches."""
    return jax.tree.map(lambda x: x.reshape(-1, num, *x.shape[1:]).swapaxes(0, 1), batch)


def train_step(state: TrainState, batch: Batch, rng: Array, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum_steps: int = 1) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step of MLM + NSP on `batch` (the global batch), packed or not.

    The dropout key is `dropout_key(rng, state.step)`. With `grad_accum_steps` > 1 the batch is
    split into micro-batches whose gradients are summed in a `lax.scan`; losses are
    normalised by the whole batch's counts, so the result equals one step on the full
    batch. The NSP loss is a mean over the batch's sentence pairs (its rows, unpacked). A
    step whose loss or gradient norm is not finite leaves params and optimizer state
    unchanged and is counted in `nonfinite_run`. Metrics: the loss sums, `batch_counts`,
    `apply_gradients`'s and the learning rate.
    """
    dropout_rng = dropout_key(rng, state.step)
    mlm_total = jnp.maximum(jnp.sum(batch["masked_weights"].astype(jnp.float32)), 1.0)
    nsp_total = num_pairs(batch)

    def loss_fn(params: Any, micro: Batch, key: Array) -> tuple[Array, dict[str, Array]]:
        sums = forward_sums(model, params, micro, deterministic=False, dropout_rng=key)
        return sums["mlm_loss_sum"] / mlm_total + sums["nsp_loss_sum"] / nsp_total, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        (loss, sums), grads = grad_fn(state.params, batch, dropout_rng)
    else:
        def accumulate(carry, xs):
            index, micro = xs
            (loss_i, sums_i), grads_i = grad_fn(state.params, micro,
                                                jax.random.fold_in(dropout_rng, index))
            return jax.tree.map(jnp.add, carry, (loss_i, sums_i, grads_i)), None

        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
            grad_fn, state.params, batch, dropout_rng))
        (loss, sums, grads), _ = jax.lax.scan(
            accumulate, (zeros[0][0], zeros[0][1], zeros[1]),
            (jnp.arange(grad_accum_steps), _split_micro_batches(batch, grad_accum_steps)))

    new_state, metrics = apply_gradients(state, loss, grads, tx)
    return new_state, dict(sums, **metrics, **batch_counts(batch),
                           learning_rate=schedule(state.step))


def apply_gradients(state: TrainState, loss: Array, grads: Any,
                    tx: optax.GradientTransformation) -> tuple[TrainState, dict[str, Array]]:
    """The optimizer update of one step, skipped (params and optimizer state unchanged,
    counted in `nonfinite_run`) when the loss or the gradient norm is not finite.
    Returns the new state and metrics: loss, grad_norm, skipped."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(params: Any, opt_state: Any) -> tuple[Any, Any]:
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # A cond, not a select over every parameter: the skip costs nothing when finite.
    params, opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o), state.params,
                                     state.opt_state)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1))
    return new_state, dict(loss=loss, grad_norm=grad_norm, skipped=(~finite).astype(jnp.float32))


def train_steps(state: TrainState, batches: Batch, rng: Array, *,
                step_fn: Callable = train_step, **step_kwargs: Any
                ) -> tuple[TrainState, dict[str, Array]]:
    """`step_fn` (default `train_step`) on each of `batches` in turn: leaves [K, B, ...] are K optimizer steps
    in one `lax.scan` (BERT's `iterations_per_loop`). Metrics come back stacked, [K].

    One call of K steps costs less than K calls: XLA:CPU allocates a step's temporary
    buffers (1.35 GB at BERT-Small, seq 128, batch 32) fresh for every call and
    page-faults them in again, and the host dispatches once per K steps.
    """
    step = functools.partial(step_fn, rng=rng, **step_kwargs)
    return jax.lax.scan(step, state, batches)  # XLA drops the loop when K is 1


def eval_step(params: Any, batch: Batch, *, model: nn.Module) -> dict[str, Array]:
    """Loss and accuracy sums on `batch`, no dropout."""
    return forward_sums(model, params, batch, deterministic=True, dropout_rng=None)


def _with_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """Traces `fn` with the mesh and logical-axis rules active (activation constraints)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
            return fn(*args, **kwargs)

    return wrapped


def jit_train_step(mesh: Mesh, state_shardings: Any, *, step_fn: Callable = train_step,
                   **step_kwargs: Any) -> Callable:
    """`train_steps` of `step_fn` (its keyword arguments in `step_kwargs`: model, tx, ...)
    compiled for `mesh`: state donated; batches [K, B, ...] with the examples split over
    data x fsdp. Each K compiles once."""
    step = functools.partial(train_steps, step_fn=step_fn, **step_kwargs)
    return jax.jit(_with_mesh(step, mesh),
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh, stacked=True),
                                 sharding.replicated(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))


def jit_eval_step(mesh: Mesh, params_shardings: Any, *, model: nn.Module,
                  eval_fn: Callable = eval_step) -> Callable:
    """`eval_fn(params, batch, model=model)` compiled for `mesh`; outputs replicated."""
    return jax.jit(_with_mesh(functools.partial(eval_fn, model=model), mesh),
                   in_shardings=(params_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))
