"""The one train step every task runs, and the eval step: pure functions, and their
jit-compiled, sharded forms.

A task gives the step its objective (`Objective`): the loss of a micro-batch, normalised
by counts taken over the whole batch (so gradient accumulation sums to the full batch's
loss), the counts a metric row reports, and its eval outputs. The step adds what every
task shares: the dropout key of the step, gradient accumulation, the optimizer update,
the guard that skips a non-finite step, and K steps per call.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from flax_bert.trainer import sharding
from flax_bert.trainer.state import TrainState

Array = jax.Array
Batch = Mapping[str, Array]


class Objective(Protocol):
    """What the train and eval steps ask of a task; every method is traced under jit."""

    def loss_totals(self, batch: Batch) -> Any:
        """The whole batch's normalisers of `loss` (e.g. its count of masked tokens)."""

    def loss(self, params: Any, batch: Batch, dropout_rng: Array, totals: Any
             ) -> tuple[Array, dict[str, Array]]:
        """(loss of `batch` divided by `totals`, sums for the train row). A total is a
        scalar, or one per row [B] (`loss_totals_per_row`): each row's loss divided by its
        own (`losses.normalised_sum`)."""

    def batch_counts(self, batch: Batch) -> dict[str, Array]:
        """Counts of the whole batch for the train row (real tokens, pairs...)."""

    def eval_step(self, params: Any, batch: Batch) -> dict[str, Array]:
        """Sums, or per-example outputs, of `batch` without dropout."""


def real_tokens(batch: Batch) -> Array:
    """float32 []: the batch's non-padding tokens (the sum of its attention_mask)."""
    return jnp.sum(batch["attention_mask"].astype(jnp.float32))


def dropout_key(rng: Array, step: Array) -> Array:
    """The dropout key of optimizer step `step`: `rng` folded with the step."""
    return jax.random.fold_in(rng, step)


def loss_totals_per_row(objective: Objective, batch: Batch, slices: int) -> Any:
    """`objective.loss_totals` of each of `slices` equal blocks of the batch's rows, times
    `slices`, repeated for each row of the block: leaves [B].

    On several TPU slices each slice holds one block (the data axis is slice-major), so a
    loss normalised this way is the mean over slices of each slice's mean, and its totals
    are sums inside a slice: the one collective between slices is the gradient reduction
    (as BERT's TPU code averages each core's mean). Totals that are Python numbers (from
    the shapes: a fine-tuning batch's rows) are the same per block and are returned as
    they are.
    """
    totals = objective.loss_totals(batch)
    if slices == 1 or all(isinstance(t, (int, float)) for t in jax.tree.leaves(totals)):
        return totals
    rows = jax.tree.leaves(batch)[0].shape[0]
    blocks = jax.tree.map(lambda x: x.reshape(slices, rows // slices, *x.shape[1:]), batch)
    per_block = jax.vmap(objective.loss_totals)(blocks)  # leaves [slices]
    return jax.tree.map(lambda t: jnp.repeat(t * slices, rows // slices), per_block)


def _split_micro_batches(batch: Batch, num: int) -> Batch:
    """[B, ...] -> [num, B / num, ...]; micro-batch i takes rows i, i + num, ... so each
    device's contiguous rows are spread evenly over the micro-batches."""
    return jax.tree.map(lambda x: x.reshape(-1, num, *x.shape[1:]).swapaxes(0, 1), batch)


def train_step(state: TrainState, batch: Batch, rng: Array, *, objective: Objective,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum_steps: int = 1, slices: int = 1
               ) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step of `objective` on `batch` (the global batch).

    The dropout key is `dropout_key(rng, state.step)`. With `grad_accum_steps` > 1 the batch is
    split into micro-batches whose gradients are summed in a `lax.scan`; the loss is
    normalised by the whole batch's `loss_totals`, so the result equals one step on the
    full batch. On several TPU `slices` each slice's rows are normalised by their own
    totals (`loss_totals_per_row`). A step whose loss or gradient norm is not finite leaves
    params and optimizer state unchanged and is counted in `nonfinite_run`. Metrics: the
    loss's sums, `apply_gradients`'s, the batch's counts and the learning rate.
    """
    dropout_rng = dropout_key(rng, state.step)
    totals = loss_totals_per_row(objective, batch, slices)
    per_row = jnp.ndim(jax.tree.leaves(totals)[0]) == 1  # [B]: split with the batch

    def loss_fn(params: Any, micro: tuple[Batch, Any], key: Array
                ) -> tuple[Array, dict[str, Array]]:
        micro_batch, micro_totals = micro
        return objective.loss(params, micro_batch, key, micro_totals if per_row else totals)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    batch_and_totals = (batch, totals if per_row else None)
    if grad_accum_steps == 1:
        (loss, sums), grads = grad_fn(state.params, batch_and_totals, dropout_rng)
    else:
        def accumulate(carry, xs):
            index, micro = xs
            (loss_i, sums_i), grads_i = grad_fn(state.params, micro,
                                                jax.random.fold_in(dropout_rng, index))
            return jax.tree.map(jnp.add, carry, (loss_i, sums_i, grads_i)), None

        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
            grad_fn, state.params, batch_and_totals, dropout_rng))
        (loss, sums, grads), _ = jax.lax.scan(
            accumulate, (zeros[0][0], zeros[0][1], zeros[1]),
            (jnp.arange(grad_accum_steps),
             _split_micro_batches(batch_and_totals, grad_accum_steps)))

    new_state, metrics = apply_gradients(state, loss, grads, tx)
    return new_state, dict(sums, **metrics, **objective.batch_counts(batch),
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


def train_steps(state: TrainState, batches: Batch, rng: Array, **step_kwargs: Any
                ) -> tuple[TrainState, dict[str, Array]]:
    """`train_step` on each of `batches` in turn: leaves [K, B, ...] are K optimizer steps
    in one `lax.scan` (BERT's `iterations_per_loop`). Metrics come back stacked, [K].

    One call of K steps costs less than K calls: XLA:CPU allocates a step's temporary
    buffers (1.35 GB at BERT-Small, seq 128, batch 32) fresh for every call and
    page-faults them in again, and the host dispatches once per K steps.
    """
    step = functools.partial(train_step, rng=rng, **step_kwargs)
    return jax.lax.scan(step, state, batches)  # XLA drops the loop when K is 1


def _with_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """Traces `fn` with the mesh and logical-axis rules active (activation constraints)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with (jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
              nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES)):
            return fn(*args, **kwargs)

    return wrapped


def jit_train_step(mesh: Mesh, state_shardings: Any, *, objective: Objective,
                   tx: optax.GradientTransformation, schedule: optax.Schedule,
                   grad_accum_steps: int = 1) -> Callable:
    """`train_steps` of `objective` compiled for `mesh`: (state, batches [K, B, ...], rng)
    -> (state, metrics [K]); state donated; the examples split over data x fsdp. Each K
    compiles once. Training, the benchmarks and ahead-of-time compiles all build it here."""
    step = functools.partial(train_steps, objective=objective, tx=tx, schedule=schedule,
                             grad_accum_steps=grad_accum_steps,
                             slices=sharding.num_slices(list(mesh.devices.flat)))
    return jax.jit(_with_mesh(step, mesh),
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh, stacked=True),
                                 sharding.replicated(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))


def jit_eval_step(mesh: Mesh, params_shardings: Any, objective: Objective) -> Callable:
    """`objective.eval_step(params, batch)` compiled for `mesh`; outputs replicated."""
    return jax.jit(_with_mesh(objective.eval_step, mesh),
                   in_shardings=(params_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))
