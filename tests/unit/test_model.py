"""Model core: parameter counts, padding invariance, tied decoder, masked-position path,
dropout, config validation."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bert import BertConfig, BertForPreTraining, BertModel
from flax_bert.compute import Compute
from flax_bert.model import BertEncoder, BertLayer

SMALL = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=64)


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _batch(rng: np.random.Generator, batch: int = 3, seq: int = 12):
    ids = rng.integers(1, SMALL.vocab_size, size=(batch, seq)).astype(np.int32)
    types = np.zeros_like(ids)
    types[:, seq // 2:] = 1
    mask = np.ones_like(ids)
    mask[1, seq - 3:] = 0  # row 1 has 3 padding tokens
    ids[mask == 0] = 0
    types[mask == 0] = 0
    return ids, types, mask


@pytest.fixture(scope="module")
def params():
    ids, types, mask = _batch(np.random.default_rng(0))
    variables = jax.jit(BertForPreTraining(SMALL).init)(jax.random.key(0), ids, types, mask)
    return nn.unbox(variables["params"])


def test_base_parameter_counts_match_hf():
    ids = jnp.ones((1, 8), jnp.int32)
    shapes = jax.eval_shape(BertForPreTraining(BertConfig()).init, jax.random.key(0), ids, ids, ids)
    params = nn.unbox(shapes["params"])
    assert _count(params) == 110_106_428
    model_shapes = jax.eval_shape(BertModel(BertConfig()).init, jax.random.key(0), ids, ids, ids)
    assert _count(model_shapes["params"]) == 109_482_240
    assert _count(params["bert"]) == 109_482_240


def test_init_follows_bert(params):
    emb = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert abs(float(jnp.std(emb)) - SMALL.initializer_range) < 0.003
    assert float(jnp.max(jnp.abs(emb))) <= 2 * SMALL.initializer_range / 0.87 + 1e-6
    ln = params["bert"]["encoder"]["layers"]["output"]["LayerNorm"]  # [L, H] each
    np.testing.assert_array_equal(ln["scale"], 1.0)
    np.testing.assert_array_equal(ln["bias"], 0.0)


def test_padding_invariance(params):
    ids, types, mask = _batch(np.random.default_rng(1))
    apply = jax.jit(BertModel(SMALL).apply)
    seq, pooled = apply({"params": params["bert"]}, ids, types, mask)
    pad = 5
    padded = [np.pad(a, ((0, 0), (0, pad))) for a in (ids, types, mask)]
    seq_p, pooled_p = apply({"params": params["bert"]}, *padded)
    real = mask.astype(bool)
    assert float(jnp.max(jnp.abs(seq_p[:, :ids.shape[1]][real] - seq[real]))) <= 1e-5
    assert float(jnp.max(jnp.abs(pooled_p - pooled))) <= 1e-5


def test_decoder_is_tied_to_word_embeddings(params):
    ids, types, mask = _batch(np.random.default_rng(2))
    apply = jax.jit(BertForPreTraining(SMALL).apply)
    vocab_hidden = [x for x in jax.tree.leaves(params)
                    if x.shape == (SMALL.vocab_size, SMALL.hidden_size)]
    assert len(vocab_hidden) == 1  # no second vocab x hidden matrix
    logits, _ = apply({"params": params}, ids, types, mask)

    def changed(p):
        p = jax.tree.map(lambda x: x, p)
        emb = p["bert"]["embeddings"]["word_embeddings"]["embedding"]
        delta = jnp.linspace(-1.0, 1.0, SMALL.hidden_size) ** 2  # not orthogonal to LN outputs
        p["bert"]["embeddings"]["word_embeddings"]["embedding"] = emb.at[7].add(delta)
        return p

    logits2, _ = apply({"params": changed(params)}, ids, types, mask)
    # Token 7's logit moves everywhere (the decoder row changed) ...
    assert float(jnp.min(jnp.abs(logits2[..., 7] - logits[..., 7]))) > 1e-4
    # ... and with token 7 absent from the input, its embedding row still gets a gradient
    # from the logits: it can only arrive through the tied decoder.
    ids = np.where(ids == 7, 8, ids)
    grad = jax.jit(jax.grad(
        lambda p: jnp.sum(apply({"params": p}, ids, types, mask)[0][..., 7])))(params)
    row = grad["bert"]["embeddings"]["word_embeddings"]["embedding"][7]
    assert float(jnp.max(jnp.abs(row))) > 1e-4


def test_layer_norm_matches_numpy_and_flax_names():
    from flax_bert.layers import LayerNorm

    rng = np.random.default_rng(6)
    x = (rng.normal(size=(2, 5, 16)) * 3 + 7).astype(np.float32)  # large mean: two-pass var
    ln = LayerNorm(epsilon=1e-12)
    variables = ln.init(jax.random.key(0), x)
    assert set(variables["params"]) == {"scale", "bias"}  # flax's nn.LayerNorm names
    params = {"scale": jnp.asarray(rng.normal(size=16), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=16), jnp.float32)}
    x64 = x.astype(np.float64)
    ref = ((x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-12)
           * np.asarray(params["scale"]) + np.asarray(params["bias"]))
    np.testing.assert_allclose(ln.apply({"params": params}, x), ref, atol=2e-5)
    out_bf16 = LayerNorm(1e-12, jnp.bfloat16).apply({"params": params}, x.astype(jnp.bfloat16))
    assert out_bf16.dtype == jnp.bfloat16


def test_masked_positions_equal_gathered_logits(params):
    ids, types, mask = _batch(np.random.default_rng(3))
    apply = jax.jit(BertForPreTraining(SMALL).apply)
    full, nsp = apply({"params": params}, ids, types, mask)
    positions = np.array([[1, 4, 0], [2, 3, 5], [7, 7, 11]], np.int32)
    masked, nsp_m = apply({"params": params}, ids, types, mask, masked_positions=positions)
    assert masked.shape == (3, 3, SMALL.vocab_size)
    expected = np.take_along_axis(np.asarray(full), positions[..., None], axis=1)
    np.testing.assert_allclose(masked, expected, atol=1e-5)
    np.testing.assert_allclose(nsp_m, nsp, atol=1e-6)


def test_dropout(params):
    ids, types, mask = _batch(np.random.default_rng(4))
    apply = jax.jit(BertForPreTraining(SMALL).apply, static_argnames="deterministic")
    a = apply({"params": params}, ids, types, mask, deterministic=True)
    b = apply({"params": params}, ids, types, mask, deterministic=True)
    np.testing.assert_array_equal(a[0], b[0])

    def run(seed):
        return apply({"params": params}, ids, types, mask, deterministic=False,
                     rngs={"dropout": jax.random.key(seed)})[0]

    np.testing.assert_array_equal(run(1), run(1))
    assert float(jnp.max(jnp.abs(run(1) - run(2)))) > 1e-3
    assert float(jnp.max(jnp.abs(run(1) - a[0]))) > 1e-3


def test_remat_gives_same_outputs_and_grads(params):
    ids, types, mask = _batch(np.random.default_rng(5))

    def loss(p, policy):
        logits, nsp = BertForPreTraining(SMALL, Compute(remat_policy=policy)).apply(
            {"params": p}, ids, types, mask, deterministic=False,
            rngs={"dropout": jax.random.key(0)})
        return jnp.sum(logits ** 2) + jnp.sum(nsp)

    grad = jax.jit(jax.grad(loss), static_argnums=1)  # one program per policy
    ref = grad(params, "none")
    for policy in ("nothing_saveable", "dots_saveable"):
        got = grad(params, policy)
        # Remat recomputes each scanned layer: same dropout masks, float32 sums reordered.
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), ref, got)


class _DropoutKey(nn.Module):
    """The first key a top-level module draws from the "dropout" stream (as BertEncoder's)."""

    @nn.compact
    def __call__(self):
        return self.make_rng("dropout")


@pytest.mark.parametrize("remat_policy, deterministic, scan_layers", [
    ("none", True, "scan"), ("none", False, "scan"), ("nothing_saveable", False, "scan"),
    ("none", False, "unroll")])
def test_scanned_encoder_equals_unrolled_layers(remat_policy, deterministic, scan_layers):
    """The encoder's one nn.scan over stacked params (looped, or unrolled by "unroll")
    = a per-layer loop of BertLayer on row i of each param, layer i with dropout key split i;
    the rows differ (split init)."""
    cfg = dataclasses.replace(SMALL, num_hidden_layers=3)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 12, cfg.hidden_size)).astype(np.float32)  # [B, S, H]
    mask = np.ones((3, 12), np.int32)
    mask[1, 9:] = 0
    encoder = BertEncoder(cfg, Compute(remat_policy=remat_policy, scan_layers=scan_layers))
    params = nn.unbox(jax.jit(encoder.init, static_argnums=3)(jax.random.key(0), x, mask, True)[
        "params"])
    kernels = params["layers"]["intermediate"]["dense"]["kernel"]  # [L, H, I]
    assert kernels.shape == (3, cfg.hidden_size, cfg.intermediate_size)
    assert not np.allclose(kernels[0], kernels[1])
    rngs = {"dropout": jax.random.key(3)}
    got = jax.jit(lambda p: encoder.apply({"params": p}, x, mask, deterministic, rngs=rngs))(
        params)  # [B, S, H]

    @jax.jit
    def unrolled(p):
        keys = jax.random.split(_DropoutKey().apply({}, rngs=rngs), cfg.num_hidden_layers)
        h = x
        for i in range(cfg.num_hidden_layers):
            h, _ = BertLayer(cfg).apply({"params": jax.tree.map(lambda a: a[i], p["layers"])},
                                        h, mask, deterministic, keys[i])
        return h  # [B, S, H]

    np.testing.assert_allclose(got, unrolled(params), atol=1e-6, rtol=0)
    if not deterministic:  # dropout was on: the output differs from the deterministic one
        off = jax.jit(lambda p: encoder.apply({"params": p}, x, mask, True))(params)
        assert float(jnp.max(jnp.abs(got - off))) > 1e-2


def test_bfloat16_compute_keeps_float32_params_and_logits(params):
    ids, types, mask = _batch(np.random.default_rng(6))
    logits, nsp = jax.jit(BertForPreTraining(SMALL, Compute(dtype="bfloat16")).apply)(
        {"params": params}, ids, types, mask)
    ref, _ = jax.jit(BertForPreTraining(SMALL).apply)({"params": params}, ids, types, mask)
    assert logits.dtype == jnp.float32 and nsp.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(logits - ref))) < 0.1


def test_sequence_longer_than_positions_is_an_error(params):
    ids = np.ones((1, SMALL.max_position_embeddings + 1), np.int32)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        BertModel(SMALL).apply({"params": params["bert"]}, ids, ids, ids)


@pytest.mark.parametrize("field,value", [
    ("hidden_size", 30), ("num_attention_heads", 0), ("vocab_size", -1),
    ("hidden_act", "tanhh"), ("hidden_dropout_prob", 1.5), ("num_hidden_layers", 2.5),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        BertConfig(**{**BertConfig().__dict__, field: value})


def test_config_roundtrips_hf_json(tmp_path):
    hf = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": 30522,
          "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
          "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
          "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
          "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
          "pad_token_id": 0, "position_embedding_type": "absolute", "use_cache": True}
    cfg = BertConfig.from_dict(hf)
    assert cfg == BertConfig()
    path = tmp_path / "config.json"
    cfg.to_json_file(str(path))
    assert BertConfig.from_json_file(str(path)) == cfg
    assert {k: v for k, v in hf.items() if k in cfg.to_dict()} == cfg.to_dict()
    with pytest.raises(ValueError, match="model_type"):
        BertConfig.from_dict({**hf, "model_type": "gpt2"})


def test_hash_dropout_rate_scale_and_keys():
    from flax_bert.layers import Dropout

    x = jnp.ones((1000, 1000), jnp.float32)

    def drop(seed, rate=0.1):
        return Dropout(rate).apply({}, x, False, rngs={"dropout": jax.random.key(seed)})

    a, b = np.asarray(drop(0)), np.asarray(drop(1))
    for y in (a, b):
        assert abs(float(np.mean(y == 0)) - 0.1) < 0.002  # 6 standard deviations
        np.testing.assert_allclose(y[y != 0], 1 / 0.9, rtol=1e-6)
    np.testing.assert_array_equal(a, np.asarray(drop(0)))
    # Independent masks for different keys: both dropped ~ 0.1 * 0.1 of the elements.
    assert abs(float(np.mean((a == 0) & (b == 0))) - 0.01) < 0.001
    # Neighbouring elements are uncorrelated (rows and columns).
    assert abs(float(np.mean((a[:, 1:] == 0) & (a[:, :-1] == 0))) - 0.01) < 0.001
    assert abs(float(np.mean((a[1:] == 0) & (a[:-1] == 0))) - 0.01) < 0.001
    assert abs(float(np.mean(np.asarray(drop(2, rate=0.5)) == 0)) - 0.5) < 0.003
