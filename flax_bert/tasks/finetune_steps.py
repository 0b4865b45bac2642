"""Fine-tuning's pure steps: one train step over a task's loss (classification,
regression, answer spans), the eval steps, and the classification metrics.

A loss takes the model's outputs and the batch and returns (the mean loss that is
differentiated, sums for the train row: loss_sum, count, and correct where a prediction
can be right or wrong); `summarize_train` turns the summed rows into means.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_bert import losses
from flax_bert.trainer import step as pretrain_steps
from flax_bert.trainer.state import TrainState

Array = jax.Array
Batch = Mapping[str, Array]
Loss = Callable[[Any, Batch], tuple[Array, dict[str, Array]]]


def _outputs(model: nn.Module, params: Any, batch: Batch, deterministic: bool,
             dropout_rng: Array | None) -> Any:
    """The model's outputs: logits [B, C] of a sequence head, or ([B, S], [B, S]) of the
    span head."""
    return model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"],
                       batch["attention_mask"], deterministic=deterministic,
                       rngs=None if deterministic else {"dropout": dropout_rng})


def classification_loss(logits: Array, batch: Batch) -> tuple[Array, dict[str, Array]]:
    """Mean cross-entropy of logits [B, C] against label [B]."""
    weights = jnp.ones(batch["label"].shape, jnp.float32)  # [B]
    loss_sum, correct = losses.weighted_cross_entropy(logits, batch["label"], weights)
    return loss_sum / weights.shape[0], {"loss_sum": loss_sum, "correct": correct,
                                         "count": jnp.sum(weights)}


def regression_loss(logits: Array, batch: Batch) -> tuple[Array, dict[str, Array]]:
    """Mean squared error of the one output, logits [B, 1], against label [B] (float):
    transformers' problem_type "regression"."""
    error = logits[:, 0] - batch["label"].astype(jnp.float32)  # [B]
    loss_sum = jnp.sum(jnp.square(error))
    count = jnp.float32(error.shape[0])
    return loss_sum / count, {"loss_sum": loss_sum, "count": count}


def span_loss(logits: tuple[Array, Array], batch: Batch) -> tuple[Array, dict[str, Array]]:
    """Extractive QA (transformers' BertForQuestionAnswering): the mean of the start and
    the end cross-entropy, each over a window's tokens, against start_positions and
    end_positions [B]. `correct` counts windows whose both argmaxes are right."""
    start_logits, end_logits = logits  # [B, S] each
    weights = jnp.ones(batch["start_positions"].shape, jnp.float32)  # [B]
    start_sum, _ = losses.weighted_cross_entropy(start_logits, batch["start_positions"], weights)
    end_sum, _ = losses.weighted_cross_entropy(end_logits, batch["end_positions"], weights)
    both = ((jnp.argmax(start_logits, -1) == batch["start_positions"])
            & (jnp.argmax(end_logits, -1) == batch["end_positions"]))  # [B]
    loss_sum = (start_sum + end_sum) / 2
    return loss_sum / weights.shape[0], {"loss_sum": loss_sum, "correct": jnp.sum(both),
                                         "count": jnp.sum(weights)}


def train_step(state: TrainState, batch: Batch, rng: Array, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               loss: Loss = classification_loss) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step of `loss` on `batch`; the dropout key is
    `steps.dropout_key(rng, state.step)`. Non-finite steps are skipped
    (steps.apply_gradients)."""
    dropout_rng = pretrain_steps.dropout_key(rng, state.step)

    def loss_fn(params: Any) -> tuple[Array, dict[str, Array]]:
        return loss(_outputs(model, params, batch, False, dropout_rng), batch)

    (mean, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, metrics = pretrain_steps.apply_gradients(state, mean, grads, tx)
    return new_state, dict(sums, **metrics, real_tokens=pretrain_steps.real_tokens(batch),
                           learning_rate=schedule(state.step))


def eval_step(params: Any, batch: Batch, *, model: nn.Module) -> dict[str, Array]:
    """Per example: the predicted class and the loss (0 on padding rows), [B] each."""
    logits = _outputs(model, params, batch, True, None)  # [B, C]
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, C]
    nll = -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=-1)[:, 0]  # [B]
    return {"prediction": jnp.argmax(logits, axis=-1).astype(jnp.int32),
            "loss": nll * batch["example_weight"]}


def regression_eval_step(params: Any, batch: Batch, *, model: nn.Module) -> dict[str, Array]:
    """Per example: the predicted score and the squared error (0 on padding rows), [B]."""
    score = _outputs(model, params, batch, True, None)[:, 0]  # [B]
    error = score - batch["label"].astype(jnp.float32)  # [B]
    return {"prediction": score, "loss": jnp.square(error) * batch["example_weight"]}


def span_eval_step(params: Any, batch: Batch, *, model: nn.Module) -> dict[str, Array]:
    """Per window: start_logits and end_logits [B, S] (answers are found on the host)."""
    start_logits, end_logits = _outputs(model, params, batch, True, None)
    return {"start_logits": start_logits, "end_logits": end_logits}


def summarize_train(totals: Mapping[str, Any]) -> dict[str, float]:
    """Train row means from summed step metrics: loss, and accuracy where the loss
    counts correct predictions."""
    count = max(float(totals["count"]), 1.0)
    row = {"loss": float(totals["loss_sum"]) / count}
    if "correct" in totals:
        row["accuracy"] = float(totals["correct"]) / count
    return row


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
