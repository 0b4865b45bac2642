"""flax_bert.ops: each hand-written backward equals autodiff of its plain form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bert import ops


@pytest.mark.parametrize("fused", [True, False])
def test_tied_decoder_value_and_gradients(fused):
    """Both forms equal x @ embedding.T + bias and its autodiff gradients."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)  # [B, P, H]
    emb = jnp.asarray(rng.normal(size=(11, 8)), jnp.float32)  # [V, H]
    bias = jnp.asarray(rng.normal(size=(11,)), jnp.float32)  # [V]
    cot = jnp.asarray(rng.normal(size=(2, 3, 11)), jnp.float32)  # [B, P, V]

    def reference(x, emb, bias):
        return jnp.einsum("bph,vh->bpv", x, emb) + bias

    out, vjp = jax.vjp(lambda *a: ops.tied_decoder(*a, fused=fused), x, emb, bias)
    ref_out, ref_vjp = jax.vjp(reference, x, emb, bias)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6)
    for got, want in zip(vjp(cot), ref_vjp(cot)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # bfloat16 compute: cotangents in the primals' dtypes, the bias gradient in float32.
    vjp_bf16 = jax.vjp(lambda *a: ops.tied_decoder(*a, fused=fused),
                       x.astype(jnp.bfloat16), emb.astype(jnp.bfloat16), bias)[1](cot)
    assert [g.dtype for g in vjp_bf16] == [jnp.bfloat16, jnp.bfloat16, jnp.float32]
    np.testing.assert_allclose(vjp_bf16[2], cot.sum((0, 1)), rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_cross_entropy_gradient_and_hits(fused):
    """Both forms equal autodiff of log_softmax + gather; hits equal argmax."""
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(3, 5, 13)) * 3, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 13, (3, 5)), jnp.int32)
    weights = jnp.asarray(rng.uniform(size=(3, 5)), jnp.float32)

    def reference(x):
        nll = -jnp.take_along_axis(jax.nn.log_softmax(x), labels[..., None], -1)[..., 0]
        return jnp.sum(nll * weights)

    def loss(x):
        return jnp.sum(ops.cross_entropy_and_hit(x, labels, fused)[0] * weights)

    value, grad = jax.jit(jax.value_and_grad(loss))(logits)
    ref_value, ref_grad = jax.value_and_grad(reference)(logits)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)
    # Make half the labels the argmax, so hits are neither all 0 nor all 1.
    labels = jnp.where(jnp.arange(5)[None, :] % 2 == 0, jnp.argmax(logits, -1), labels)
    _, hit = ops.cross_entropy_and_hit(logits, labels, fused)
    np.testing.assert_array_equal(hit, (jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    assert 0 < float(hit.mean()) < 1


def test_plain_forms_have_forward_mode():
    """jax.jvp runs through the plain forms (not through a custom VJP) and agrees with the
    fused forms' reverse mode: <grad f, t> = jvp(f, t)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)  # [B, P, H]
    emb = jnp.asarray(rng.normal(size=(11, 8)), jnp.float32)  # [V, H]
    labels = jnp.asarray(rng.integers(0, 11, (2, 3)), jnp.int32)  # [B, P]
    t = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def f(x, fused):
        logits = ops.tied_decoder(x, emb, jnp.zeros(11), fused)
        return jnp.sum(ops.cross_entropy_and_hit(logits, labels, fused)[0])

    _, directional = jax.jvp(lambda x: f(x, False), (x,), (t,))
    np.testing.assert_allclose(directional, jnp.vdot(jax.grad(f)(x, True), t), rtol=1e-5)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: f(x, True), (x,), (t,))
