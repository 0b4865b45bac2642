"""MLM and NSP losses and metrics: pure functions, jit-able.

Metrics are returned as sums and counts, so that they add up correctly over micro-batches,
devices and eval batches; `summarize` turns them into means.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_bert import ops
from flax_bert.model import packed_inputs

Array = jax.Array


def normalised_sum(values: Array, total: Array | int) -> Array:
    """sum(values) / total, values [B, ...]. `total` is a scalar, or one per row [B] (each
    row's share of the normaliser: see trainer.step.loss_totals_per_row), when each row's
    values are divided by their row's total before the sum."""
    if jnp.ndim(total) == 0:
        return jnp.sum(values) / total
    return jnp.sum(values / jnp.reshape(total, jnp.shape(total) + (1,) * (values.ndim - 1)))


def cross_entropy_items(logits: Array, labels: Array, weights: Array,
                        fused: bool = True) -> tuple[Array, Array]:
    """Per-item cross-entropy times weight [...], and the sum of weight*correct [].

    logits [..., C] (computed in float32), labels [...] int, weights [...] float; `fused`
    picks the hand-written VJP (see flax_bert/ops.py).
    """
    nll, hit = ops.cross_entropy_and_hit(logits.astype(jnp.float32), labels, fused)  # [...]
    return nll * weights, jnp.sum(hit * weights)


def weighted_cross_entropy(logits: Array, labels: Array, weights: Array,
                           fused: bool = True) -> tuple[Array, Array]:
    """Sum of per-item cross-entropy times weight, and sum of weight*correct."""
    loss, correct = cross_entropy_items(logits, labels, weights, fused)
    return jnp.sum(loss), correct


def pretraining_metrics(mlm_logits: Array, nsp_logits: Array, batch: Mapping[str, Array],
                        fused: bool = True, totals: tuple[Array, Array] | None = None
                        ) -> dict[str, Array]:
    """Loss and accuracy sums for MLM (over real predictions) and NSP (over sentence pairs).

    mlm_logits [B, P, V], nsp_logits [B, 2]; batch has masked_ids [B, P],
    masked_weights [B, P], next_sentence_label [B] and optionally example_weight [B]
    (0 for padding examples in an eval batch). Packed rows of K pairs: mlm_logits
    [B, M, V], masked_* [B, M], nsp_logits [B, K, 2], next_sentence_label [B, K] and
    pair_weights [B, K] (1 for a pair, 0 for an empty slot or an eval padding row), the
    NSP weights. With `totals` (the MLM and the NSP normaliser, each a scalar or one per row,
    see `normalised_sum`), "loss" is the objective: MLM loss / MLM total + NSP loss / NSP
    total.
    """
    mlm_weights = batch["masked_weights"].astype(jnp.float32)  # [B, P]
    nsp_weights = batch.get("pair_weights")  # [B, K]: packed rows
    if nsp_weights is None:
        nsp_weights = batch.get("example_weight")
    if nsp_weights is None:
        nsp_weights = jnp.ones(nsp_logits.shape[:1], jnp.float32)  # [B]
    nsp_weights = nsp_weights.astype(jnp.float32)
    mlm_loss, mlm_correct = cross_entropy_items(
        mlm_logits, batch["masked_ids"], mlm_weights, fused)  # [B, P], []
    nsp_loss, nsp_correct = cross_entropy_items(
        nsp_logits, batch["next_sentence_label"], nsp_weights, fused)  # [B] or [B, K], []
    sums = {
        "mlm_loss_sum": jnp.sum(mlm_loss), "mlm_correct": mlm_correct,
        "mlm_count": jnp.sum(mlm_weights),
        "nsp_loss_sum": jnp.sum(nsp_loss), "nsp_correct": nsp_correct,
        "nsp_count": jnp.sum(nsp_weights),
    }
    if totals is not None:
        sums["loss"] = (normalised_sum(mlm_loss, totals[0])
                        + normalised_sum(nsp_loss, totals[1]))
    return sums


def pretraining_sums(model: nn.Module, params: Any, batch: Mapping[str, Array],
                     deterministic: bool, dropout_rng: Array | None,
                     totals: tuple[Array, Array] | None = None) -> dict[str, Array]:
    """`pretraining_metrics` of `model` (a BertForPreTraining) on one batch, packed or not;
    the cross-entropy's backward follows the model's `compute.fused_backward`."""
    mlm_logits, nsp_logits = model.apply(
        {"params": params}, batch["input_ids"], batch["token_type_ids"],
        batch["attention_mask"], deterministic=deterministic,
        masked_positions=batch["masked_positions"], **packed_inputs(batch),
        rngs=None if deterministic else {"dropout": dropout_rng}
    )  # [B, P, V], [B, 2]; packed rows: [B, M, V], [B, K, 2]
    return pretraining_metrics(mlm_logits, nsp_logits, batch, model.compute.fused_backward,
                               totals)


def total_loss(sums: Mapping[str, Array]) -> Array:
    """The pretraining objective: mean MLM loss + mean NSP loss."""
    mlm = sums["mlm_loss_sum"] / jnp.maximum(sums["mlm_count"], 1.0)
    nsp = sums["nsp_loss_sum"] / jnp.maximum(sums["nsp_count"], 1.0)
    return mlm + nsp


def summarize(sums: Mapping[str, float | Array]) -> dict[str, float]:
    """Means from summed metrics (host side): losses, accuracies and MLM perplexity."""
    s = {k: float(v) for k, v in sums.items()}
    mlm_count, nsp_count = max(s["mlm_count"], 1.0), max(s["nsp_count"], 1.0)
    mlm_loss, nsp_loss = s["mlm_loss_sum"] / mlm_count, s["nsp_loss_sum"] / nsp_count
    return {
        "loss": mlm_loss + nsp_loss,
        "mlm_loss": mlm_loss,
        "nsp_loss": nsp_loss,
        "mlm_accuracy": s["mlm_correct"] / mlm_count,
        "nsp_accuracy": s["nsp_correct"] / nsp_count,
        "mlm_perplexity": float(np.exp(np.float64(mlm_loss))),
    }
