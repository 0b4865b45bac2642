"""TrainState and its sharded creation from the model's logical axis annotations."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from flax_bert.model import example_inputs
from flax_bert.trainer import sharding

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes: a plain pytree of arrays."""

    step: Array  # [] int32, optimizer steps taken (skipped non-finite steps included)
    params: Any  # float32 parameter pytree, the model's `params` collection
    opt_state: Any
    nonfinite_run: Array  # [] int32, consecutive steps skipped for non-finite loss/grads


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                       rng: Array, seq_len: int,
                       params: Any | None = None) -> tuple[TrainState, Any]:
    """Initialises (or places the given `params` into) a TrainState sharded on `mesh`.

    Returns (state, state_shardings). Shardings come from the logical axis names on the
    parameters (via `jax.eval_shape`, so nothing is materialised twice) and the rules in
    `sharding.LOGICAL_AXIS_RULES`; the optimizer state mirrors its parameters' shardings.
    """

    def init(rng: Array, params: Any | None) -> TrainState:
        boxed = model.init(rng, *example_inputs(seq_len))["params"]
        if params is not None:  # keep the annotations, take the given values
            boxed = jax.tree.map(lambda box, value: box.replace_boxed(value), boxed, params,
                                 is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        return TrainState(step=jnp.zeros((), jnp.int32), params=boxed,
                          opt_state=tx.init(boxed), nonfinite_run=jnp.zeros((), jnp.int32))

    abstract = jax.eval_shape(init, rng, params)
    shardings = sharding.logical_shardings(nn.get_partition_spec(abstract), mesh)
    state = jax.jit(lambda r, p: nn.unbox(init(r, p)), out_shardings=shardings)(rng, params)
    return state, shardings
