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


def weighted_cross_entropy(logits: Array, labels: Array, weights: Array,
                           fused: bool = True) -> tuple[Array, Array]:
    """Sum of per-item cross-entropy times weight, and sum of weight*correct.

    logits [..., C] (computed in float32), labels [...] int, weights [...] float; `fused`
    picks the hand-written VJP (see flax_bert/ops.py).
    """
    nll, hit = ops.cross_entropy_and_hit(logits.astype(jnp.float32), labels, fused)  # [...]
    return jnp.sum(nll * weights), jnp.sum(hit * weights)


def pretraining_metrics(mlm_logits: Array, nsp_logits: Array, batch: Mapping[str, Array],
                        fused: bool = True) -> dict[str, Array]:
    """Loss and accuracy sums for MLM (over real predictions) and NSP (over sentence pairs).

    mlm_logits [B, P, V], nsp_logits [B, 2]; batch has masked_ids [B, P],
    masked_weights [B, P], next_sentence_label [B] and optionally example_weight [B]
    (0 for padding examples in an eval batch). Packed rows of K pairs: mlm_logits
    [B, M, V], masked_* [B, M], nsp_logits [B, K, 2], next_sentence_label [B, K] and
    pair_weights [B, K] (1 for a pair, 0 for an empty slot or an eval padding row), the
    NSP weights.
    """
    mlm_weights = batch["masked_weights"].astype(jnp.float32)  # [B, P]
    nsp_weights = batch.get("pair_weights")  # [B, K]: packed rows
    if nsp_weights is None:
        nsp_weights = batch.get("example_weight")
    if nsp_weights is None:
        nsp_weights = jnp.ones(nsp_logits.shape[:1], jnp.float32)  # [B]
    nsp_weights = nsp_weights.astype(jnp.float32)
    mlm_loss_sum, mlm_correct = weighted_cross_entropy(
        mlm_logits, batch["masked_ids"], mlm_weights, fused)
    nsp_loss_sum, nsp_correct = weighted_cross_entropy(
        nsp_logits, batch["next_sentence_label"], nsp_weights, fused)
    return {
        "mlm_loss_sum": mlm_loss_sum, "mlm_correct": mlm_correct, "mlm_count": jnp.sum(mlm_weights),
        "nsp_loss_sum": nsp_loss_sum, "nsp_correct": nsp_correct, "nsp_count": jnp.sum(nsp_weights),
    }


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


def forward_sums(model: nn.Module, params: Any, batch: Mapping[str, Array],
                 deterministic: bool, dropout_rng: Array | None) -> dict[str, Array]:
    """Loss and accuracy sums of one batch, packed or not (see
    pretraining_metrics); the cross-entropy's backward follows the model's
    `compute.fused_backward`."""
    mlm_logits, nsp_logits = model.apply(
        {"params": params}, batch["input_ids"], batch["token_type_ids"],
        batch["attention_mask"], deterministic=deterministic,
        masked_positions=batch["masked_positions"], **packed_inputs(batch),
        rngs=None if deterministic else {"dropout": dropout_rng}
    )  # [B, P, V], [B, 2]; packed rows: [B, M, V], [B, K, 2]
    return pretraining_metrics(mlm_logits, nsp_logits, batch,
                               model.compute.fused_backward)
