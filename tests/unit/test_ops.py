"""flax_bert.ops: each hand-written backward equals autodiff of its plain form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bert import ops
from flax_bert import losses


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


def test_scan_layers_choice():
    """auto: unrolled on the CPU without remat, else the loop (GPUs, TPUs, remat: unrolled,
    remat saves no memory on XLA:CPU); the train config's "auto" reaches the model
    resolved. (The loop equals the unrolled layers: tests/unit/test_model.py.)"""
    from configs import default
    from flax_bert.compute import Compute

    assert not ops.scan_layers("auto", platform="cpu")
    assert ops.scan_layers("auto", platform="gpu") and ops.scan_layers("auto", platform="tpu")
    assert ops.scan_layers("auto", "nothing_saveable", "cpu")
    assert ops.scan_layers("scan", platform="cpu")
    assert not ops.scan_layers("unroll", platform="gpu")
    assert not ops.scan_layers("unroll", "dots_saveable", "cpu")
    train = default.get_config().train
    assert Compute.from_config(train).scan is False
    train.remat_policy = "nothing_saveable"
    assert Compute.from_config(train).scan is True
    with pytest.raises(ValueError, match="scan_layers=True is unknown"):
        Compute(scan_layers=True)


def test_remat_saves_memory_with_auto_layers():
    """With scan_layers "auto" (unrolled on the CPU without remat), asking for remat still
    cuts the gradient's compiled temporaries: auto picks the loop then (unrolled, XLA:CPU
    would merge the recomputation into the forward pass and save nothing)."""
    from configs import default
    from flax_bert import BertConfig, BertForPreTraining
    from flax_bert.compute import Compute
    from tests.unit.test_train_step import make_batch

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=32)
    batch = make_batch(np.random.default_rng(0), 64)
    params = jax.jit(BertForPreTraining(cfg).init)(
        jax.random.key(0), batch["input_ids"], batch["token_type_ids"],
        batch["attention_mask"], masked_positions=batch["masked_positions"])["params"]
    temp = {}
    for policy in ("none", "nothing_saveable"):
        train = default.get_config().train
        train.remat_policy = policy
        model = BertForPreTraining(cfg, Compute.from_config(train))

        def loss(params, model=model):
            sums = losses.pretraining_sums(model, params, batch, False, jax.random.key(1))
            return sums["mlm_loss_sum"] + sums["nsp_loss_sum"]

        compiled = jax.jit(jax.grad(loss)).lower(params).compile()
        temp[policy] = compiled.memory_analysis().temp_size_in_bytes
    assert temp["nothing_saveable"] < 0.7 * temp["none"], temp


# ---- Dropout, LayerNorm, per-token Dense -----------------------------------------------
def test_hash_dropout_keep_rate_scale_and_independence():
    """Keep rate 1 - rate, kept values scaled by 1 / (1 - rate) (so the mean is kept), and
    masks independent across keys and neighbouring elements, like jax.random.bernoulli."""
    x = jnp.full((512, 512), 2.0, jnp.float32)
    for rate in (0.1, 0.5):
        y = np.asarray(ops.hash_dropout(x, rate, jax.random.key(0)))
        assert abs(float(np.mean(y != 0)) - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / y.size)
        np.testing.assert_allclose(y[y != 0], 2.0 / (1 - rate), rtol=1e-6)
    a = np.asarray(ops.hash_dropout(x, 0.5, jax.random.key(1))) == 0
    b = np.asarray(ops.hash_dropout(x, 0.5, jax.random.key(2))) == 0
    np.testing.assert_array_equal(a, np.asarray(ops.hash_dropout(x, 0.5, jax.random.key(1))) == 0)
    sd = 5 * np.sqrt(0.25 * 0.75 / a.size)  # both of a pair dropped: p = 0.25
    for first, second in ((a, b), (a[:, 1:], a[:, :-1]), (a[1:], a[:-1])):
        assert abs(float(np.mean(first & second)) - 0.25) < sd


def test_mix32_is_a_bijection_with_avalanche():
    """Distinct inputs stay distinct, and flipping one input bit flips ~half the output bits."""
    x = jnp.arange(1 << 16, dtype=jnp.uint32)
    h = np.asarray(ops.mix32(x))
    assert len(np.unique(h)) == h.size
    flipped = np.asarray(ops.mix32(x ^ jnp.uint32(1 << 7)))
    bits = np.unpackbits((h ^ flipped).view(np.uint8)).mean()
    assert abs(bits - 0.5) < 0.01


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_equals_textbook_formula(dtype):
    """(x - mean) / sqrt(var + eps) * scale + bias, in float64; float32 out of bf16 input."""
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(3.0, 2.0, size=(4, 5, 16)), dtype)  # [B, S, H]
    scale, bias = (jnp.asarray(rng.normal(size=16), jnp.float32) for _ in range(2))
    got = ops.layer_norm(x, scale, bias, 1e-12)
    assert got.dtype == jnp.float32
    x64 = np.asarray(x, np.float64)
    want = ((x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-12)
            * np.asarray(scale) + np.asarray(bias))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_per_token_equals_direct_dense():
    """A Dense layer through per_token equals it applied to [B, S, in]: value and gradients."""
    import flax.linen as nn

    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)  # [B, S, in]
    dense = nn.Dense(6)
    params = dense.init(jax.random.key(0), x)

    def loss(p, x, reshaped):
        y = ops.per_token(lambda t: dense.apply(p, t), x) if reshaped else dense.apply(p, x)
        return jnp.sum(jnp.sin(y)), y  # [B, S, out]

    (_, y), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x, True)
    (_, y_ref), grads_ref = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x, False)
    assert y.shape == (3, 5, 6)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
