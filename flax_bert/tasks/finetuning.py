"""What every fine-tuning task (classification, a GLUE task, SQuAD) shares: a BERT with a
task head trained on arrays of examples, starting from a checkpoint's encoder (or random
weights), in a run folder. A task subclasses `FineTuning` with its head's loss, its eval
step, its evaluation and its export; the heads' losses are here.

A head loss takes the model's outputs, the batch and the whole batch's example count and
returns (the loss that is differentiated: the batch's summed loss over that count, sums
for the train row: loss_sum, count, and correct where a prediction can be right or
wrong); `FineTuning.summarize` turns the summed rows into means.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flax_bert import losses
from flax_bert.config import BertConfig
from flax_bert.tasks import example_batches, model_start
from flax_bert.trainer import checks
from flax_bert.trainer.run_folder import Paths
from flax_bert.trainer.step import real_tokens

Array = jax.Array
Batch = Mapping[str, Array]


@dataclasses.dataclass(frozen=True, eq=False)
class FineTuning:
    """A fine-tuning run of `model` on `train_arrays`, evaluated on `eval_arrays` (rows
    along the first axis), in the run folder `paths`."""

    config: ml_collections.ConfigDict  # the run's, with train.steps set (for_data)
    paths: Paths
    start: model_start.Start
    model_config: BertConfig
    labels: list[str]  # class names in id order ([] without classes)
    model: nn.Module
    train_arrays: dict[str, np.ndarray]
    eval_arrays: dict[str, np.ndarray]
    plots = (("loss", ("loss",)),)
    boundaries = ()  # one phase

    def __post_init__(self) -> None:
        checks.check_batch(self.config, ("global_batch_size", "eval_batch_size"),
                           jax.process_count())

    @property
    def seq_length(self) -> int:
        return self.config.data.max_seq_length

    # ---- The step's objective (traced under jit). -------------------------------------
    def outputs(self, params: Any, batch: Batch, dropout_rng: Array | None) -> Any:
        """The model's outputs (no dropout when `dropout_rng` is None): logits [B, C] of a
        sequence head, or ([B, S], [B, S]) of the span head."""
        return self.model.apply({"params": params}, batch["input_ids"],
                                batch["token_type_ids"], batch["attention_mask"],
                                deterministic=dropout_rng is None,
                                rngs=None if dropout_rng is None else {"dropout": dropout_rng})

    def head_loss(self, outputs: Any, batch: Batch, total: int
                  ) -> tuple[Array, dict[str, Array]]:
        """(summed loss / `total`, sums for the train row) of the head's outputs."""
        raise NotImplementedError

    def loss_totals(self, batch: Batch) -> int:
        """The whole batch's examples: the loss is a mean over them."""
        return batch["input_ids"].shape[0]

    def loss(self, params: Any, batch: Batch, dropout_rng: Array,
             totals: int) -> tuple[Array, dict[str, Array]]:
        return self.head_loss(self.outputs(params, batch, dropout_rng), batch, totals)

    def batch_counts(self, batch: Batch) -> dict[str, Array]:
        return {"real_tokens": real_tokens(batch)}

    def eval_step(self, params: Any, batch: Batch) -> dict[str, Array]:
        raise NotImplementedError

    # ---- Data, evaluation, the run folder's files. --------------------------------------
    def train_batches(self) -> Any:
        return example_batches.make_train_iterator(
            self.train_arrays, self.config.train.global_batch_size, self.config.seed,
            jax.process_index(), jax.process_count())

    def eval_batches(self, arrays: dict[str, np.ndarray] | None = None
                     ) -> list[dict[str, np.ndarray]]:
        """This process's share of the eval batches of `arrays` (default: eval_arrays)."""
        return example_batches.eval_batches(
            self.eval_arrays if arrays is None else arrays,
            self.config.train.eval_batch_size, jax.process_index(), jax.process_count())

    def evaluate(self, eval_on: Callable[[dict], Any], batches: Iterable[dict],
                 final: bool) -> dict[str, float]:
        raise NotImplementedError

    def summarize(self, totals: Mapping[str, Any]) -> dict[str, float]:
        """Train row means from summed step metrics: loss, and accuracy where the loss
        counts correct predictions."""
        count = max(float(totals["count"]), 1.0)
        row = {"loss": float(totals["loss_sum"]) / count}
        if "correct" in totals:
            row["accuracy"] = float(totals["correct"]) / count
        return row

    def log_fields(self, state: Any) -> dict[str, float]:
        return {}

    def initial_params(self) -> dict | None:
        return None if self.start.encoder is None else {"bert": self.start.encoder}

    def write_files(self) -> None:
        model_start.write_run_files(self.paths, self.start, self.model_config, self.labels)

    def export(self, params: Any) -> None:
        raise NotImplementedError


def classification_loss(logits: Array, batch: Batch, total: int
                        ) -> tuple[Array, dict[str, Array]]:
    """Cross-entropy of logits [B, C] against label [B], summed and divided by `total`."""
    weights = jnp.ones(batch["label"].shape, jnp.float32)  # [B]
    loss_sum, correct = losses.weighted_cross_entropy(logits, batch["label"], weights)
    return loss_sum / total, {"loss_sum": loss_sum, "correct": correct, "count": jnp.sum(weights)}


def regression_loss(logits: Array, batch: Batch, total: int
                    ) -> tuple[Array, dict[str, Array]]:
    """Squared error of the one output, logits [B, 1], against label [B] (float), summed
    and divided by `total`: transformers' problem_type "regression"."""
    error = logits[:, 0] - batch["label"].astype(jnp.float32)  # [B]
    loss_sum = jnp.sum(jnp.square(error))
    return loss_sum / total, {"loss_sum": loss_sum, "count": jnp.float32(error.shape[0])}


def span_loss(logits: tuple[Array, Array], batch: Batch, total: int
              ) -> tuple[Array, dict[str, Array]]:
    """Extractive QA (transformers' BertForQuestionAnswering): the mean of the start and
    the end cross-entropy, each over a window's tokens, against start_positions and
    end_positions [B], summed over windows and divided by `total`. `correct` counts
    windows whose both argmaxes are right."""
    start_logits, end_logits = logits  # [B, S] each
    weights = jnp.ones(batch["start_positions"].shape, jnp.float32)  # [B]
    start_sum, _ = losses.weighted_cross_entropy(start_logits, batch["start_positions"], weights)
    end_sum, _ = losses.weighted_cross_entropy(end_logits, batch["end_positions"], weights)
    both = ((jnp.argmax(start_logits, -1) == batch["start_positions"])
            & (jnp.argmax(end_logits, -1) == batch["end_positions"]))  # [B]
    loss_sum = (start_sum + end_sum) / 2
    return loss_sum / total, {"loss_sum": loss_sum, "correct": jnp.sum(both),
                              "count": jnp.sum(weights)}


def class_predictions(logits: Array, batch: Batch) -> dict[str, Array]:
    """Per example: the predicted class and the loss (0 on padding rows), [B] each."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, C]
    nll = -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=-1)[:, 0]  # [B]
    return {"prediction": jnp.argmax(logits, axis=-1).astype(jnp.int32),
            "loss": nll * batch["example_weight"]}


def score_predictions(logits: Array, batch: Batch) -> dict[str, Array]:
    """Per example: the predicted score and the squared error (0 on padding rows), [B]."""
    score = logits[:, 0]  # [B]
    error = score - batch["label"].astype(jnp.float32)  # [B]
    return {"prediction": score, "loss": jnp.square(error) * batch["example_weight"]}


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


def for_data(config: ml_collections.ConfigDict, train_size: int,
             learning_rate: float | None = None) -> ml_collections.ConfigDict:
    """A copy of `config` for one run on `train_size` train examples (GLUE, SQuAD):
    train.steps set (when 0: train.epochs x train_size / train.global_batch_size, rounded
    up), optimizer.warmup_steps (optimizer.warmup_fraction of the steps, rounded) and,
    when given, optimizer.learning_rate."""
    t, o = config.train, config.optimizer  # their ranges: flax_bert/config_ranges.py
    out = ml_collections.ConfigDict(config.to_dict())
    steps = t.steps or max(1, math.ceil(t.epochs * train_size / t.global_batch_size))
    out.train.steps = steps
    out.optimizer.warmup_steps = round(o.warmup_fraction * steps)
    if learning_rate is not None:
        out.optimizer.learning_rate = learning_rate
    return out
