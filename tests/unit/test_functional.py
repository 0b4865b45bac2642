"""flax_bert.functional: pure functions that compose with jit (static config), grad + vmap
(per-example gradients), jvp, checkpoint and grad-of-grad, and agree with the train step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_bert import BertForPreTraining, functional
from flax_bert.compute import Compute
from flax_bert.tasks.pretraining import PretrainingObjective
from flax_bert.trainer import optimizer, step as steps
from flax_bert.trainer.state import TrainState
from tests.unit.test_train_step import CFG, make_batch, opt_config

KEY = jax.random.key(7)  # CFG has dropout 0.1: the key matters
# One compiled loss-and-gradient, shared by the tests (dropout key an argument).
loss_and_grad = jax.jit(jax.value_and_grad(
    lambda p, b, key: functional.pretraining_loss(p, b, key, config=CFG)[0]))


@pytest.fixture(scope="module")
def params():
    return jax.jit(functional.init, static_argnums=0)(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def batch():
    return make_batch(np.random.default_rng(0), 4)


@jax.jit
def tree_dot(a, b):
    """<a, b> over all leaves."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _wave(tree, fn, scale: float = 1.0, freq: float = 1.0):
    """A tree like `tree` of scale * fn(freq * arange + leaf index) values (float32)."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten([
        (scale * fn(freq * np.arange(x.size) + i)).reshape(x.shape).astype(np.float32)
        for i, x in enumerate(leaves)])


def _tree_close(a, b, atol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol), a, b)


def test_vmap_grad_equals_per_example_loop(params, batch):
    """Per-example gradients (dropout on, one key): vmap(grad) = a loop of single examples."""

    def loss(p, example):  # example: one row without its batch axis
        example = jax.tree.map(lambda x: x[None], example)
        return functional.pretraining_loss(p, example, KEY, config=CFG)[0]

    per_example = jax.device_get(jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(
        params, batch))  # NumPy: rows sliced on the host
    for i in range(4):
        _, grads = loss_and_grad(params, jax.tree.map(lambda x: x[i:i + 1], batch), KEY)
        _tree_close(jax.tree.map(lambda g: g[i], per_example), grads, atol=1e-6)
    # The rows really differ (no broadcast of one example's gradient).
    kernel = per_example["cls"]["predictions"]["transform"]["dense"]["kernel"]  # [4, H, H]
    assert np.max(np.abs(kernel[0] - kernel[1])) > 1e-4


def test_loss_equals_train_step(params, batch):
    """Step t of `steps.train_step(state, batch, rng)` computes
    pretraining_loss(params, batch, steps.dropout_key(rng, t)): loss and gradient norm."""
    tx, schedule = optimizer.make_optimizer(opt_config(), 100)
    step = 5
    state = TrainState(step=jnp.int32(step), params=params,
                       opt_state=jax.jit(tx.init)(params), nonfinite_run=jnp.int32(0))
    objective = PretrainingObjective(BertForPreTraining(CFG))
    _, metrics = jax.jit(lambda s, b, r: steps.train_step(
        s, b, r, objective=objective, tx=tx, schedule=schedule))(state, batch, KEY)
    value, grads = loss_and_grad(params, batch, steps.dropout_key(KEY, step))
    np.testing.assert_allclose(value, metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(optax.tree.norm(grads), metrics["grad_norm"], rtol=1e-5)
    # Dropout is on, so the key matters: the unfolded key gives another loss.
    assert abs(float(loss_and_grad(params, batch, KEY)[0]) - float(metrics["loss"])) > 1e-4


def test_jvp_and_checkpoint_compose(params, batch):
    """jvp of the encoder agrees with its vjp (<u, J t> = <J^T u, t>); grad through
    jax.checkpoint equals plain grad."""
    tangent = _wave(params, np.sin, scale=1e-2)

    def pooled(p):
        return functional.encode(p, batch, config=CFG, rng=KEY)[1]  # [B, H]

    @jax.jit
    def jvp_and_vjp(p, t):
        out, directional = jax.jvp(pooled, (p,), (t,))
        u = jnp.cos(jnp.arange(out.size)).reshape(out.shape)  # [B, H]
        return jnp.vdot(u, directional), jax.vjp(pooled, p)[1](u)[0]

    u_directional, cotangent = jvp_and_vjp(params, tangent)
    expected = tree_dot(cotangent, tangent)
    assert abs(float(expected)) > 1e-3
    np.testing.assert_allclose(u_directional, expected, rtol=1e-4)

    remat = jax.jit(jax.grad(jax.checkpoint(
        lambda p: functional.pretraining_loss(p, batch, KEY, config=CFG)[0])))(params)
    _tree_close(remat, loss_and_grad(params, batch, KEY)[1], atol=1e-6)


def test_loss_jvp_with_plain_backward(params, batch):
    """With Compute(fused_backward=False) the loss has forward mode: its jvp along t equals
    <grad, t> of the default (hand-written VJP) loss, dropout on."""
    tangent = jax.tree.map(lambda x: np.cos(np.arange(x.size, dtype=np.float32)).reshape(
        x.shape), params)
    _, directional = jax.jit(lambda p, t: jax.jvp(
        lambda q: functional.pretraining_loss(q, batch, KEY, config=CFG,
                                              compute=Compute(fused_backward=False))[0],
        (p,), (t,)))(
        params, tangent)
    grad = loss_and_grad(params, batch, KEY)[1]
    expected = tree_dot(grad, tangent)
    assert abs(float(expected)) > 1e-2
    np.testing.assert_allclose(directional, expected, rtol=1e-4)


def test_hessian_vector_product(params, batch):
    """Reverse-over-reverse with the default loss (its hand-written VJPs have no forward
    mode): <u, H v> equals a central difference of <u, grad> along v."""
    u = _wave(params, np.sin)
    v = _wave(params, np.cos, scale=1e-2, freq=3.0)

    def u_grad(p):
        return tree_dot(u, loss_and_grad(p, batch, KEY)[1])

    u_hv = jax.jit(jax.grad(u_grad))(params)  # H u, then <H u, v> = <u, H v>
    eps = 1e-2
    shift = jax.jit(lambda p, sign: jax.tree.map(lambda x, t: x + sign * eps * t, p, v))
    difference = (u_grad(shift(params, 1.0)) - u_grad(shift(params, -1.0))) / (2 * eps)
    assert abs(float(difference)) > 1e-2
    np.testing.assert_allclose(tree_dot(u_hv, v), difference, rtol=1e-2)


def test_encode_config_is_static_and_vmaps(params, batch):
    twin = dataclasses.replace(CFG)
    assert twin is not CFG and hash(twin) == hash(CFG)
    encode = jax.jit(functional.encode, static_argnames="config")
    seq, pooled = encode(params, batch, config=CFG)
    assert seq.shape == (4, 16, CFG.hidden_size) and pooled.shape == (4, CFG.hidden_size)
    np.testing.assert_array_equal(encode(params, batch, config=twin)[0], seq)
    assert encode._cache_size() == 1  # An equal config is the same static argument.
    # Examples are independent: vmap over single examples = the batched call.
    one = jax.jit(jax.vmap(lambda ex: functional.encode(
        params, jax.tree.map(lambda x: x[None], ex), config=CFG)))(batch)
    np.testing.assert_allclose(one[0][:, 0], seq, atol=1e-5)
    np.testing.assert_allclose(one[1][:, 0], pooled, atol=1e-5)
