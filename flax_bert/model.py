"""BERT in Flax Linen, read top to bottom.

embeddings -> self-attention -> encoder layer -> encoder -> pooler -> BertModel ->
pretraining heads -> BertForPreTraining. (The building blocks, the layer's feed-forward and
output blocks among them: layers.py; the fine-tuning heads: heads.py.)

Shape legend: B batch, S sequence length, H hidden_size, N num_attention_heads,
D head_dim (= H / N), I intermediate_size, V vocab_size, P predictions per example,
K sentence pairs per packed row.

Packed rows (several sentence pairs back to back in one row) take three more inputs:
`position_ids` [B, S] (positions restart at each pair), `pair_ids` [B, S] (i + 1 on the
tokens of pair i, 0 on padding: attention stays inside each pair) and `cls_positions`
[B, K] (where each pair's [CLS] is: the pooler and the NSP head run there). Without them,
a row is one sequence.

Parameter names follow Hugging Face's PyTorch BERT (`embeddings/word_embeddings`,
`encoder/layer/0/attention/self/query`, `cls/predictions/transform/dense`, ...), so that
`flax_bert.hf` maps state dicts 1:1; the encoder's layers are one stacked tree,
`encoder/layers/attention/self/query/kernel` [L, H, H] (row i: HF's layer i), which one
`nn.scan` runs. Every parameter carries logical axis names (`layers`, `vocab`, `embed`,
`heads`, `mlp`); `flax_bert.trainer.sharding` maps them onto the device mesh.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_bert import ops
from flax_bert.compute import Compute
from flax_bert.config import BertConfig
from flax_bert.layers import (BATCH_LENGTH_EMBED, BATCH_LENGTH_HEADS_KV, BATCH_LENGTH_VOCAB, LAYERS, BertIntermediate, BertOutput, DenseParams, Dropout, activation_fn, at_positions, dense, init, layer_norm, unstack_layers)

Array = jax.Array

class BertEmbeddings(nn.Module):
    """Sum of word, segment (token type) and learned position embeddings; LN; dropout."""

    config: BertConfig
    compute: Compute = Compute()

    def setup(self) -> None:
        cfg, dtype = self.config, self.compute.jnp_dtype
        self.word_embeddings = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype,
            embedding_init=init(cfg, "vocab", "embed"))
        self.position_embeddings = nn.Embed(
            cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype,
            embedding_init=init(cfg, None, "embed"))
        self.token_type_embeddings = nn.Embed(
            cfg.type_vocab_size, cfg.hidden_size, dtype=dtype,
            embedding_init=init(cfg, None, "embed"))
        self.LayerNorm = layer_norm(cfg, dtype)
        self.dropout = Dropout(cfg.hidden_dropout_prob, self.compute.dropout_impl)

    def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool,
                 position_ids: Array | None = None) -> Array:
        if position_ids is None:
            position_ids = jnp.arange(input_ids.shape[1])[None, :]  # [1, S]
        x = (self.word_embeddings(input_ids)  # [B, S, H]
             + self.token_type_embeddings(token_type_ids)  # [B, S, H]
             + self.position_embeddings(position_ids))  # [1 or B, S, H]
        x = self.LayerNorm(x)  # [B, S, H]
        x = self.dropout(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)
        self.sow("intermediates", "hidden_states", x)  # [B, S, H]
        return x


class BertSelfAttention(nn.Module):
    """Multi-head self-attention over the non-padding keys (of the query's own pair, with
    `pair_ids`); returns merged heads [B, S, H].

    Q, K and V keep HF's separate `query` / `key` / `value` parameters but are computed by
    one fused [H, 3H] matmul (one larger GEMM forward, and one for the input gradient).
    `compute.attention_impl`: how softmax(QK^T/sqrt(D))V runs where the probabilities are
    not needed (`ops.fused_attention_impl`).
    """

    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array, key_mask: Array, deterministic: bool,
                 dropout_rng: Array | None = None, pair_ids: Array | None = None) -> Array:
        cfg, dtype = self.config, self.compute.jnp_dtype
        batch, seq_len, hidden = x.shape
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim

        kernels, biases = zip(*(
            DenseParams(cfg.hidden_size, hidden, init(cfg, "embed", "heads"),
                         nn.with_logical_partitioning(nn.initializers.zeros_init(), ("heads",)),
                         name=name)()
            for name in ("query", "key", "value")))
        kernel = jnp.concatenate(kernels, axis=1).astype(dtype)  # [H, 3H]
        bias = jnp.concatenate(biases).astype(dtype)  # [3H]
        qkv = ops.per_token(lambda t: jnp.dot(t.astype(dtype), kernel) + bias, x)  # [B, S, 3H]
        qkv = qkv.reshape(batch, seq_len, 3, heads, head_dim)  # [B, S, 3, N, D]
        # lax.split (not three slices): its gradient is one concatenate, not three pads + adds.
        q, k, v = (nn.with_logical_constraint(part[:, :, 0], BATCH_LENGTH_HEADS_KV)
                   for part in jax.lax.split(qkv, (1, 1, 1), axis=2))  # [B, S, N, D] each

        rate = cfg.attention_probs_dropout_prob
        dropout = not deterministic and rate > 0.0
        fused = ops.fused_attention_impl(self.compute.attention_impl, dtype, head_dim,
                                         packed=pair_ids is not None)
        if fused and not dropout and not self.is_mutable_collection("intermediates"):
            ctx = ops.dot_product_attention(q, k, v, key_mask, fused, pair_ids)  # [B, S, N, D]
        else:
            # Dropout on the attention probabilities, or a probe recording them, needs them
            # materialised. The 1/sqrt(D) scale goes on q ([B, S, N, D]), not on the scores.
            mask = ops.attention_mask(key_mask, pair_ids)  # [B, 1, 1 or S, S]: query x key
            q = q * jnp.asarray(head_dim ** -0.5, q.dtype)  # [B, S, N, D]
            scores = jnp.einsum("bqnd,bknd->bnqk", q, k)  # [B, N, S, S]
            scores = jnp.where(mask, scores.astype(jnp.float32),
                               jnp.finfo(jnp.float32).min)  # [B, N, S, S]
            probs = jax.nn.softmax(scores, axis=-1).astype(dtype)  # [B, N, S, S]
            self.sow("intermediates", "attention_probs", probs)  # before dropout
            probs = Dropout(rate, self.compute.dropout_impl)(probs, not dropout, dropout_rng)
            ctx = jnp.einsum("bnqk,bknd->bqnd", probs, v)  # [B, S, N, D]
        ctx = nn.with_logical_constraint(ctx, BATCH_LENGTH_HEADS_KV)
        return ctx.reshape(batch, seq_len, cfg.hidden_size)  # [B, S, H]


class BertAttention(nn.Module):
    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array, key_mask: Array, deterministic: bool,
                 dropout_rngs: tuple[Array, Array] | None = None,
                 pair_ids: Array | None = None) -> Array:
        rngs = dropout_rngs or (None, None)
        ctx = BertSelfAttention(self.config, self.compute, name="self")(
            x, key_mask, deterministic, rngs[0], pair_ids)
        return BertOutput(self.config, "heads", self.compute, name="output")(
            ctx, x, deterministic, rngs[1])


class BertLayer(nn.Module):
    """Post-LN transformer encoder layer: attention -> add&LN -> FFN -> add&LN.

    Returns (output [B, S, H], None): the (carry, per-step output) of a `nn.scan` step.
    """

    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array, key_mask: Array, deterministic: bool,
                 dropout_rng: Array | None = None,
                 pair_ids: Array | None = None) -> tuple[Array, None]:
        """`dropout_rng`: this layer's dropout key (default: drawn from the "dropout" stream);
        its three dropout sites use fold_in(dropout_rng, 0 | 1 | 2)."""
        rngs = [None] * 3
        if not deterministic:
            key = self.make_rng("dropout") if dropout_rng is None else dropout_rng
            rngs = [jax.random.fold_in(key, site) for site in range(3)]
        x = BertAttention(self.config, self.compute, name="attention")(
            x, key_mask, deterministic, (rngs[0], rngs[1]), pair_ids)
        h = BertIntermediate(self.config, self.compute, name="intermediate")(x)  # [B, S, I]
        x = BertOutput(self.config, "mlp", self.compute, name="output")(
            h, x, deterministic, rngs[2])  # [B, S, H]
        self.sow("intermediates", "hidden_states", x)
        return x, None


class BertEncoder(nn.Module):
    """The L layers as one `nn.scan` over stacked parameters `layers/...` ([L, ...] each,
    logical axis `layers`), as MaxText's scan_layers: one layer is traced and compiled
    once, whatever L. Layer i's dropout key is split i of one key drawn from the "dropout"
    stream. `compute.scan` False unrolls the same scan (unroll=L). With remat the scanned
    layer is `nn.remat`: the scan's backward loop recomputes each layer in turn (an
    unrolled recomputation XLA:CPU would merge with the forward pass). Recorded
    intermediates are stacked too, [L, ...] under `layers`.
    """

    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array, key_mask: Array, deterministic: bool,
                 pair_ids: Array | None = None) -> Array:
        num_layers = self.config.num_hidden_layers
        layer = BertLayer
        if self.compute.remat is not None:
            layer = nn.remat(layer, policy=self.compute.remat, prevent_cse=False,
                             static_argnums=(3,))  # 3: deterministic
        layers = nn.scan(layer, variable_axes={"params": 0, "intermediates": 0},
                         split_rngs={"params": True},
                         in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                         length=num_layers,
                         unroll=1 if self.compute.scan else num_layers,
                         metadata_params={nn.PARTITION_NAME: "layers"})  # logical axis
        keys = None if deterministic else jax.random.split(self.make_rng("dropout"), num_layers)
        x, _ = layers(self.config, self.compute, name=LAYERS)(
            x, key_mask, deterministic, keys, pair_ids)  # [B, S, H]
        return x


class BertPooler(nn.Module):
    """tanh(dense) of the [CLS] token: the row's first, or each pair's (cls_positions)."""

    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, sequence_output: Array, cls_positions: Array | None = None) -> Array:
        if cls_positions is None:
            cls = sequence_output[:, 0]  # [B, H]
        else:
            cls = at_positions(sequence_output, cls_positions)  # [B, K, H]
        layer = dense(self.config, self.config.hidden_size, ("embed", "mlp"),
                      self.compute.jnp_dtype, "dense")
        return jnp.tanh(layer(cls))  # [B, H] or [B, K, H]


class BertModel(nn.Module):
    """The encoder: returns (sequence_output [B, S, H], pooled_output [B, H], or [B, K, H]
    given cls_positions); pooled_output is None without the pooler
    (`add_pooling_layer=False`, as HF's token and span heads). Packed rows: see the top.

    `apply(..., mutable=["intermediates"])` also returns what a probe needs (HF's
    `hidden_states` and `attentions`), each a 1-tuple as `sow` stores it, with or without remat:
        intermediates/embeddings/hidden_states                     [B, S, H]
        intermediates/encoder/layer_i/hidden_states                [B, S, H] (layer i's output)
        intermediates/encoder/layer_i/attention/self/attention_probs  [B, N, S, S] (pre-dropout)
    Unless `intermediates` is mutable, nothing is recorded and attention stays fused.
    """

    config: BertConfig
    compute: Compute = Compute()  # How it computes; parameters are always float32.
    add_pooling_layer: bool = True

    def setup(self) -> None:
        self.embeddings = BertEmbeddings(self.config, self.compute)
        # The encoder's intermediates leave it per layer (layer_i/...), as HF numbers them.
        unstacked = nn.map_variables(
            BertEncoder, "intermediates", mutable=True,
            trans_out_fn=lambda v: {col: unstack_layers(t) for col, t in v.items()})
        self.encoder = unstacked(self.config, self.compute)
        self.pooler = BertPooler(self.config, self.compute) if self.add_pooling_layer else None

    def __call__(self, input_ids: Array, token_type_ids: Array, attention_mask: Array,
                 deterministic: bool = True, position_ids: Array | None = None,
                 pair_ids: Array | None = None,
                 cls_positions: Array | None = None) -> tuple[Array, Array | None]:
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}); shorten data.max_seq_length")
        x = self.embeddings(input_ids, token_type_ids, deterministic, position_ids)  # [B, S, H]
        x = self.encoder(x, attention_mask, deterministic, pair_ids)  # [B, S, H]
        return x, None if self.pooler is None else self.pooler(x, cls_positions)


class BertPredictionHeadTransform(nn.Module):
    """HF's `cls/predictions/transform`: dense, activation, LayerNorm."""

    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, dtype = self.config, self.compute.jnp_dtype
        x = ops.per_token(dense(cfg, cfg.hidden_size, ("embed", "mlp"), dtype, "dense"),
                           x)  # [B, P, H]
        x = activation_fn(cfg.hidden_act)(x)
        return layer_norm(cfg, dtype)(x)  # [B, P, H]


class BertLMPredictionHead(nn.Module):
    """MLM head: transform, then the decoder tied to the word embeddings, plus a bias."""

    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array, word_embeddings: Array) -> Array:
        x = BertPredictionHeadTransform(self.config, self.compute, name="transform")(x)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               ("vocab",)),
                          (self.config.vocab_size,))  # [V]
        logits = ops.tied_decoder(x, word_embeddings.astype(self.compute.jnp_dtype), bias,
                                  self.compute.fused_backward)  # [B, P, V]
        return nn.with_logical_constraint(logits, BATCH_LENGTH_VOCAB)


class BertPreTrainingHeads(nn.Module):
    """HF's `cls`: `predictions` (MLM) and `seq_relationship` (NSP, 2 logits)."""

    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array, pooled: Array, word_embeddings: Array) -> tuple[Array, Array]:
        mlm_logits = BertLMPredictionHead(self.config, self.compute, name="predictions")(
            x, word_embeddings)  # [B, P, V]
        nsp_logits = dense(self.config, 2, ("embed", None), self.compute.jnp_dtype,
                            "seq_relationship")(pooled)  # [B, 2] or [B, K, 2]
        return mlm_logits, nsp_logits.astype(jnp.float32)


class BertForPreTraining(nn.Module):
    """BERT with its MLM and NSP heads: returns (mlm_logits, nsp_logits), both float32.

    mlm_logits is [B, P, V] at `masked_positions` [B, P] when given (the transform and the
    vocabulary projection then run only there, as in google-research/bert), else
    [B, S, V]. nsp_logits is [B, 2] (label 0: B follows A; 1: B is random), or [B, K, 2]
    at packed rows' `cls_positions` [B, K] (packed rows: see the top).
    The encoder's parameters live under `bert`, so `BertModel` can run them alone.
    `compute.fused_backward` also picks the loss's cross-entropy VJP (losses.py).
    """

    config: BertConfig
    compute: Compute = Compute()

    def setup(self) -> None:
        self.bert = BertModel(self.config, self.compute)
        self.cls = BertPreTrainingHeads(self.config, self.compute)

    def __call__(self, input_ids: Array, token_type_ids: Array, attention_mask: Array,
                 deterministic: bool = True, masked_positions: Array | None = None,
                 position_ids: Array | None = None, pair_ids: Array | None = None,
                 cls_positions: Array | None = None) -> tuple[Array, Array]:
        sequence_output, pooled = self.bert(
            input_ids, token_type_ids, attention_mask, deterministic, position_ids, pair_ids,
            cls_positions)  # [B, S, H], [B, H] or [B, K, H]
        if masked_positions is not None:
            sequence_output = at_positions(sequence_output, masked_positions)  # [B, P, H]
        word_embeddings = self.bert.embeddings.word_embeddings.embedding  # [V, H]
        return self.cls(sequence_output, pooled, word_embeddings)


# The model inputs of a batch of packed rows (several sentence pairs a row), beside those
# of every batch (the module docstring).
PACKED_INPUTS = ("position_ids", "pair_ids", "cls_positions")


def packed_inputs(batch: Mapping[str, Array]) -> dict[str, Array]:
    """The PACKED_INPUTS that `batch` has (none: it is not packed)."""
    return {key: batch[key] for key in PACKED_INPUTS if key in batch}


def example_inputs(seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dummy [1, seq_len] batch for `init` (parameter shapes do not depend on it)."""
    ids = np.zeros((1, seq_len), np.int32)
    return ids, ids, np.ones_like(ids)
