"""Attention (flax_bert.ops and BertSelfAttention): XLA's fused path and the explicit one
equal the textbook formula, with padding and on packed rows (several sentence pairs a
row, block-diagonal); what each config value picks; what cuDNN is handed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bert import ops
from flax_bert import losses


def _qkv_and_mask(rng: np.random.Generator, dtype=jnp.float32, batch=3, seq=10, heads=2,
                  head_dim=8):
    """q, k, v [B, S, N, D] and a right-padded key mask [B, S] (one row unpadded)."""
    q, k, v = (jnp.asarray(rng.normal(size=(batch, seq, heads, head_dim)), dtype)
               for _ in range(3))
    lengths = np.array([seq, 3, 7])[:batch]
    mask = jnp.asarray(np.arange(seq)[None, :] < lengths[:, None], jnp.int32)  # [B, S]
    return q, k, v, mask


def _explicit_attention(q, k, v, key_mask):
    """The textbook form in float64: softmax(q k^T / sqrt(D) + padding) v."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(q.shape[-1])  # [B, N, S, S]
    scores = np.where(np.asarray(key_mask, bool)[:, None, None, :], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnqk,bknd->bqnd", probs, v)  # [B, S, N, D]


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 3e-2)])
def test_dot_product_attention_equals_explicit_with_padding(dtype, tol):
    """The fused path (XLA here) equals the textbook formula with right-padded masks, and
    the key-length form (what cuDNN is given) equals the mask form."""
    q, k, v, mask = _qkv_and_mask(np.random.default_rng(0), dtype)
    got = ops.dot_product_attention(q, k, v, mask, "xla")  # [B, S, N, D]
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float64), _explicit_attention(q, k, v, mask),
                               atol=tol, rtol=tol)
    np.testing.assert_array_equal(ops.key_lengths(mask), [10, 3, 7])
    by_length = jax.nn.dot_product_attention(q, k, v, implementation="xla",
                                             key_value_seq_lengths=ops.key_lengths(mask))
    np.testing.assert_allclose(np.asarray(by_length, np.float64), np.asarray(got, np.float64),
                               atol=tol, rtol=tol)


def _pair_ids(rng: np.random.Generator, batch=3, seq=10):
    """pair_ids [B, S] of packed rows (1..3 pairs, then padding) and their key mask."""
    rows = []
    for _ in range(batch):
        lengths = rng.integers(1, 4, rng.integers(1, 4))
        row = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])
        rows.append(np.pad(row, (0, seq - len(row))))
    pair_ids = np.stack(rows).astype(np.int32)
    return pair_ids, (pair_ids > 0).astype(np.int32)


def _plain_mask(key_mask, pair_ids):
    """[B, S, S] bool, element by element: query q may see key k."""
    batch, seq = key_mask.shape
    return np.array([[[bool(key_mask[b, k]) and (pair_ids is None
                                                 or pair_ids[b, q] == pair_ids[b, k])
                       for k in range(seq)] for q in range(seq)] for b in range(batch)])


def test_attention_mask_equals_plain_form():
    """Padding: [B, 1, 1, S], the non-padding keys; packed rows: [B, 1, S, S], the query's
    own pair's non-padding keys."""
    rng = np.random.default_rng(3)
    pair_ids, key_mask = _pair_ids(rng)
    assert 0 < key_mask.mean() < 1 and pair_ids.max() > 1
    padding = ops.attention_mask(jnp.asarray(key_mask))
    assert padding.shape == (3, 1, 1, 10) and padding.dtype == jnp.bool_
    np.testing.assert_array_equal(np.broadcast_to(padding[:, 0], (3, 10, 10)),
                                  _plain_mask(key_mask, None))
    packed = ops.attention_mask(jnp.asarray(key_mask), jnp.asarray(pair_ids))
    assert packed.shape == (3, 1, 10, 10)
    np.testing.assert_array_equal(packed[:, 0], _plain_mask(key_mask, pair_ids))


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 3e-2)])
def test_dot_product_attention_equals_explicit_on_packed_rows(dtype, tol):
    """XLA's fused path with the block-diagonal mask equals the textbook formula run on
    each pair alone (real queries; a padding query's output is unused)."""
    rng = np.random.default_rng(4)
    q, k, v, _ = _qkv_and_mask(rng, dtype)
    pair_ids, key_mask = _pair_ids(rng)
    got = np.asarray(ops.dot_product_attention(q, k, v, jnp.asarray(key_mask), "xla",
                                               jnp.asarray(pair_ids)), np.float64)
    for b in range(3):
        for pair in range(1, pair_ids[b].max() + 1):
            tokens = np.flatnonzero(pair_ids[b] == pair)
            alone = _explicit_attention(*(np.asarray(t[b:b + 1, tokens], np.float64)
                                          for t in (q, k, v)), np.ones((1, len(tokens))))
            np.testing.assert_allclose(got[b, tokens], alone[0], atol=tol, rtol=tol)


def test_fused_attention_impl_choice(monkeypatch):
    """auto: XLA off a GPU or in float32, and for packed rows; cuDNN for eligible unpacked
    rows on a GPU; explicit: None."""
    assert jax.default_backend() == "cpu"
    assert ops.fused_attention_impl("auto", jnp.bfloat16, 64) == "xla"
    assert ops.fused_attention_impl("auto", jnp.float32, 64) == "xla"
    assert ops.fused_attention_impl("cudnn", jnp.bfloat16, 64) == "cudnn"
    assert ops.fused_attention_impl("explicit", jnp.float32, 64) is None
    monkeypatch.setattr(ops.jax, "default_backend", lambda: "gpu")
    assert ops.fused_attention_impl("auto", jnp.bfloat16, 64) == "cudnn"
    assert ops.fused_attention_impl("auto", jnp.bfloat16, 64, packed=True) == "xla"
    assert ops.fused_attention_impl("auto", jnp.float32, 64) == "xla"
    assert ops.fused_attention_impl("auto", jnp.bfloat16, 72 * 2) == "xla"
    assert ops.fused_attention_impl("cudnn", jnp.bfloat16, 64, packed=True) == "cudnn"
    assert ops.fused_attention_impl("explicit", jnp.bfloat16, 64, packed=True) is None


def test_cudnn_gets_key_lengths_or_the_packed_mask(monkeypatch):
    """What jax.nn.dot_product_attention is handed for cuDNN (which runs only on a GPU):
    unpacked, the key lengths and no mask; packed, the [B, 1, S, S] mask."""
    calls = []
    monkeypatch.setattr(ops.jax.nn, "dot_product_attention",
                        lambda q, k, v, **kwargs: calls.append(kwargs) or q)
    rng = np.random.default_rng(5)
    q, k, v, mask = _qkv_and_mask(rng, jnp.bfloat16)
    ops.dot_product_attention(q, k, v, mask, "cudnn")
    pair_ids, key_mask = _pair_ids(rng)
    ops.dot_product_attention(q, k, v, jnp.asarray(key_mask), "cudnn", jnp.asarray(pair_ids))
    assert set(calls[0]) == {"key_value_seq_lengths", "implementation"}
    np.testing.assert_array_equal(calls[0]["key_value_seq_lengths"], [10, 3, 7])
    assert set(calls[1]) == {"mask", "implementation"} and calls[1]["implementation"] == "cudnn"
    np.testing.assert_array_equal(calls[1]["mask"][:, 0], _plain_mask(key_mask, pair_ids))


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-6), ("bfloat16", 5e-2)])
def test_self_attention_fused_equals_explicit(dtype, tol):
    """BertSelfAttention gives the same context either way, with padding."""
    from flax_bert import BertConfig
    from flax_bert.compute import Compute
    from flax_bert.model import BertSelfAttention

    cfg = BertConfig(vocab_size=16, hidden_size=16, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 10, 16)), jnp.float32)  # [B, S, H]
    mask = _qkv_and_mask(rng)[3]
    params = BertSelfAttention(cfg).init(jax.random.key(0), x, mask, True)
    out = {impl: BertSelfAttention(cfg, Compute(dtype=dtype, attention_impl=impl)).apply(
        params, x, mask, True) for impl in ("auto", "explicit")}
    np.testing.assert_allclose(np.asarray(out["auto"], np.float32),
                               np.asarray(out["explicit"], np.float32), atol=tol, rtol=tol)


def test_train_loss_and_gradients_same_with_either_attention():
    """The train step's loss and gradients (hidden dropout on, attention dropout 0, padded
    batch) are the same with the fused attention as with the explicit one."""
    from flax_bert import BertConfig, BertForPreTraining
    from flax_bert.compute import Compute
    from tests.unit.test_train_step import make_batch

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32,
                     attention_probs_dropout_prob=0.0)
    batch = make_batch(np.random.default_rng(2), 8)
    assert 0 < batch["attention_mask"].mean() < 1
    params = jax.jit(BertForPreTraining(cfg).init)(
        jax.random.key(0), batch["input_ids"], batch["token_type_ids"],
        batch["attention_mask"], masked_positions=batch["masked_positions"])["params"]

    def loss(params, impl):
        sums = losses.pretraining_sums(BertForPreTraining(cfg, Compute(attention_impl=impl)),
                                       params, batch, False, jax.random.key(1))
        return sums["mlm_loss_sum"] + sums["nsp_loss_sum"]

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (value, grads), (ref_value, ref_grads) = (grad_fn(params, impl)
                                              for impl in ("auto", "explicit"))
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
