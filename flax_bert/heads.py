"""The fine-tuning heads of transformers, with its names and layouts: the encoder under
`bert`, a task layer on top. Logits are float32. Shape legend as in model.py. Each head
also takes packed rows (several sequences a row; model.py's `position_ids`, `pair_ids`
and, where it pools, `cls_positions`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_bert import ops
from flax_bert.compute import Compute
from flax_bert.config import BertConfig
from flax_bert.layers import Dropout, dense
from flax_bert.model import BertModel

Array = jax.Array


class _TaskHead(nn.Module):
    """What the task heads share: the config, the compute choices, the encoder under `bert`."""

    config: BertConfig
    compute: Compute = Compute()

    def encoder(self, add_pooling_layer: bool) -> BertModel:
        return BertModel(self.config, self.compute, add_pooling_layer, name="bert")

    def task_layer(self, features: int, name: str) -> nn.Dense:
        return dense(self.config, features, ("embed", None), self.compute.jnp_dtype, name)


class BertForSequenceClassification(_TaskHead):
    """One label per sentence or sentence pair: dropout + `classifier` on the pooled
    output. Returns logits [B, num_labels] ([B, K, num_labels] given cls_positions)."""

    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, attention_mask: Array,
                 deterministic: bool = True, position_ids: Array | None = None,
                 pair_ids: Array | None = None, cls_positions: Array | None = None) -> Array:
        _, pooled = self.encoder(add_pooling_layer=True)(
            input_ids, token_type_ids, attention_mask, deterministic, position_ids, pair_ids,
            cls_positions)  # [B, H] or [B, K, H]
        pooled = Dropout(self.config.hidden_dropout_prob, self.compute.dropout_impl)(
            pooled, deterministic)
        logits = self.task_layer(self.num_labels, "classifier")(pooled)  # [B, (K,) num_labels]
        return logits.astype(jnp.float32)


class BertForTokenClassification(_TaskHead):
    """One label per token: dropout + `classifier` on each position (no pooler, as in HF).
    Returns logits [B, S, num_labels]."""

    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, attention_mask: Array,
                 deterministic: bool = True, position_ids: Array | None = None,
                 pair_ids: Array | None = None) -> Array:
        x, _ = self.encoder(add_pooling_layer=False)(
            input_ids, token_type_ids, attention_mask, deterministic, position_ids,
            pair_ids)  # [B, S, H]
        x = Dropout(self.config.hidden_dropout_prob, self.compute.dropout_impl)(x, deterministic)
        logits = ops.per_token(self.task_layer(self.num_labels, "classifier"),
                               x)  # [B, S, num_labels]
        return logits.astype(jnp.float32)


class BertForQuestionAnswering(_TaskHead):
    """Extractive QA: `qa_outputs` gives each token a span-start and a span-end logit (no
    pooler, no dropout, as in HF). Returns (start_logits, end_logits), [B, S] each."""

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, attention_mask: Array,
                 deterministic: bool = True, position_ids: Array | None = None,
                 pair_ids: Array | None = None) -> tuple[Array, Array]:
        x, _ = self.encoder(add_pooling_layer=False)(
            input_ids, token_type_ids, attention_mask, deterministic, position_ids,
            pair_ids)  # [B, S, H]
        logits = ops.per_token(self.task_layer(2, "qa_outputs"), x).astype(jnp.float32)  # [B, S, 2]
        return logits[..., 0], logits[..., 1]
