"""Sequence classification: the pure train and eval steps, and the eval metrics."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_bert import losses
from flax_bert.training import steps as pretrain_steps
from flax_bert.training.state import TrainState

Array = jax.Array
Batch = Mapping[str, Array]


def _logits(model: nn.Module, params: Any, batch: Batch, deterministic: bool,
            dropout_rng: Array | None) -> Array:
    return model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"],
                       batch["attention_mask"], deterministic=deterministic,
                       rngs=None if deterministic else {"dropout": dropout_rng})  # [B, C]


def train_step(state: TrainState, batch: Batch, rng: Array, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule
               ) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step of mean cross-entropy on `batch`; the dropout key is
    `steps.dropout_key(rng, state.step)`. Non-finite steps are skipped
    (steps.apply_gradients)."""
    dropout_rng = pretrain_steps.dropout_key(rng, state.step)
    weights = jnp.ones(batch["label"].shape, jnp.float32)  # [B]

    def loss_fn(params: Any) -> tuple[Array, dict[str, Array]]:
        logits = _logits(model, params, batch, False, dropout_rng)  # [B, C]
        loss_sum, correct = losses.weighted_cross_entropy(logits, batch["label"], weights)
        return loss_sum / weights.shape[0], {"loss_sum": loss_sum, "correct": correct,
                                             "count": jnp.sum(weights)}

    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, metrics = pretrain_steps.apply_gradients(state, loss, grads, tx)
    return new_state, dict(sums, **metrics, real_tokens=pretrain_steps.real_tokens(batch),
                           learning_rate=schedule(state.step))


def eval_step(params: Any, batch: Batch, *, model: nn.Module) -> dict[str, Array]:
    """Per example: the predicted class and the loss (0 on padding rows), [B] each."""
    logits = _logits(model, params, batch, True, None)  # [B, C]
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, C]
    nll = -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=-1)[:, 0]  # [B]
    return {"prediction": jnp.argmax(logits, axis=-1).astype(jnp.int32),
            "loss": nll * batch["example_weight"]}


def summarize_train(totals: Mapping[str, Any]) -> dict[str, float]:
    """Train row means from summed step metrics."""
    count = max(float(totals["count"]), 1.0)
    return {"loss": float(totals["loss_sum"]) / count,
            "accuracy": float(totals["correct"]) / count}


def classification_metrics(labels: np.ndarray, predictions: np.ndarray,
                           loss_sum: float) -> dict[str, float]:
    """Accuracy, macro-F1 (the mean F1 over the classes that occur in labels or
    predictions, as scikit-learn's f1_score(average="macro")) and the mean loss."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    f1 = []
    for c in np.union1d(labels, predictions):
        true_pos = np.sum((predictions == c) & (labels == c))
        f1.append(2.0 * true_pos / (np.sum(predictions == c) + np.sum(labels == c)))
    return {"loss": loss_sum / max(len(labels), 1),
            "accuracy": float(np.mean(predictions == labels)),
            "macro_f1": float(np.mean(f1))}
