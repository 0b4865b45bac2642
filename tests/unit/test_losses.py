"""Losses against a NumPy reference; zero-weight predictions; gradients reach every param."""

import flax.linen as nn
import jax
import numpy as np

from flax_bert import BertConfig, BertForPreTraining, losses


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _batch(rng, batch=4, preds=5, vocab=11):
    weights = np.ones((batch, preds), np.float32)
    weights[0, 3:] = 0.0
    weights[2, 1:] = 0.0
    return {
        "masked_ids": rng.integers(0, vocab, (batch, preds)).astype(np.int32),
        "masked_weights": weights,
        "next_sentence_label": rng.integers(0, 2, (batch,)).astype(np.int32),
    }


def test_loss_matches_numpy_reference():
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    mlm_logits = rng.normal(size=(4, 5, 11)).astype(np.float32)
    nsp_logits = rng.normal(size=(4, 2)).astype(np.float32)

    sums = jax.jit(losses.pretraining_metrics)(mlm_logits, nsp_logits, batch)
    w = batch["masked_weights"]
    nll = -np.take_along_axis(_np_log_softmax(mlm_logits), batch["masked_ids"][..., None], -1)[..., 0]
    mlm_ref = (nll * w).sum() / w.sum()
    nsp_nll = -np.take_along_axis(_np_log_softmax(nsp_logits),
                                  batch["next_sentence_label"][:, None], -1)[:, 0]
    nsp_ref = nsp_nll.mean()
    mlm_acc = ((mlm_logits.argmax(-1) == batch["masked_ids"]) * w).sum() / w.sum()
    nsp_acc = (nsp_logits.argmax(-1) == batch["next_sentence_label"]).mean()

    np.testing.assert_allclose(losses.total_loss(sums), mlm_ref + nsp_ref, rtol=1e-6)
    summary = losses.summarize(sums)
    np.testing.assert_allclose(summary["mlm_loss"], mlm_ref, rtol=1e-6)
    np.testing.assert_allclose(summary["nsp_loss"], nsp_ref, rtol=1e-6)
    np.testing.assert_allclose(summary["mlm_accuracy"], mlm_acc, rtol=1e-6)
    np.testing.assert_allclose(summary["nsp_accuracy"], nsp_acc, rtol=1e-6)
    np.testing.assert_allclose(summary["mlm_perplexity"], np.exp(mlm_ref), rtol=1e-5)
    assert float(sums["mlm_count"]) == w.sum()


def test_zero_weight_predictions_do_not_change_the_loss():
    rng = np.random.default_rng(1)
    batch = _batch(rng)
    mlm_logits = rng.normal(size=(4, 5, 11)).astype(np.float32)
    nsp_logits = rng.normal(size=(4, 2)).astype(np.float32)
    ref = losses.total_loss(losses.pretraining_metrics(mlm_logits, nsp_logits, batch))
    noisy_logits = np.where(batch["masked_weights"][..., None] == 0, 1e3, mlm_logits)
    noisy_batch = dict(batch, masked_ids=np.where(batch["masked_weights"] == 0, 3,
                                                   batch["masked_ids"]))
    got = losses.total_loss(losses.pretraining_metrics(noisy_logits, nsp_logits, noisy_batch))
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_example_weight_excludes_padding_examples_from_nsp():
    rng = np.random.default_rng(2)
    batch = _batch(rng)
    nsp_logits = rng.normal(size=(4, 2)).astype(np.float32)
    mlm_logits = rng.normal(size=(4, 5, 11)).astype(np.float32)
    weighted = dict(batch, example_weight=np.array([1, 1, 1, 0], np.float32))
    got = losses.summarize(losses.pretraining_metrics(mlm_logits, nsp_logits, weighted))
    first3 = {k: v[:3] for k, v in batch.items()}
    ref = losses.summarize(losses.pretraining_metrics(mlm_logits[:3], nsp_logits[:3], first3))
    np.testing.assert_allclose(got["nsp_loss"], ref["nsp_loss"], rtol=1e-6)


def test_jit_grad_is_finite_and_nonzero_for_every_parameter():
    cfg = BertConfig(vocab_size=31, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 31, (4, 10)).astype(np.int32)
    types = np.concatenate([np.zeros((4, 5)), np.ones((4, 5))], axis=1).astype(np.int32)
    mask = np.ones_like(ids)
    batch = _batch(rng, batch=4, preds=3, vocab=31)
    positions = rng.integers(1, 10, (4, 3)).astype(np.int32)
    model = BertForPreTraining(cfg)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, types, mask)["params"])

    @jax.jit
    def grad_fn(p):
        def loss(p):
            mlm, nsp = model.apply({"params": p}, ids, types, mask, deterministic=False,
                                   masked_positions=positions, rngs={"dropout": jax.random.key(1)})
            return losses.total_loss(losses.pretraining_metrics(mlm, nsp, batch))
        return jax.grad(loss)(p)

    grads = grad_fn(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.max(np.abs(g)) > 0.0, path
