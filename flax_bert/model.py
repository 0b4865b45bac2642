"""BERT in Flax Linen, read top to bottom.

embeddings -> self-attention -> encoder layer -> encoder -> pooler -> heads -> models.

Shape legend: B batch, S sequence length, H hidden_size, N num_attention_heads,
D head_dim (= H / N), I intermediate_size, V vocab_size, P predictions per example.

Parameter names follow Hugging Face's PyTorch BERT (`embeddings/word_embeddings`,
`encoder/layer/0/attention/self/query`, `cls/predictions/transform/dense`, ...), so that
`flax_bert.hf` maps state dicts 1:1; the encoder's layers are one stacked tree,
`encoder/layers/attention/self/query/kernel` [L, H, H] (row i: HF's layer i), which one
`nn.scan` runs. Every parameter carries logical axis names (`layers`, `vocab`, `embed`,
`heads`, `mlp`); `flax_bert.training.sharding` maps them onto the device mesh.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_bert import ops
from flax_bert.compute import Compute
from flax_bert.config import BertConfig

Array = jax.Array
Dtype = Any

# Activation layouts, mapped to mesh axes by the rules in flax_bert/training/sharding.py.
BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")
BATCH_LENGTH_HEADS_KV = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
BATCH_LENGTH_MLP = ("activation_batch", "activation_length", "activation_mlp")
BATCH_LENGTH_VOCAB = ("activation_batch", "activation_length", "activation_vocab")


def _gelu_erf(x: Array) -> Array:
    """Exact GELU, x * Phi(x), written with erf as PyTorch computes it. (jax.nn.gelu's
    exact form uses erfc, which XLA:CPU evaluates ~1.4x slower; outputs agree to 1e-6.)"""
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(2.0 ** -0.5, x.dtype)))


def activation_fn(name: str) -> Callable[[Array], Array]:
    """HF `hidden_act` name -> function ("gelu" is the exact erf form, as in HF)."""
    return {
        "gelu": _gelu_erf,
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
    }[name]


class Dropout(nn.Module):
    """Inverted dropout whose keep mask is hashed from the element index and a key.

    Drop-in for `nn.Dropout` (same call, same "dropout" RNG stream). `impl` "hash" is
    `ops.hash_dropout` (the keep mask hashed from the element index and a key from the
    stream); "jax" is `nn.Dropout` (jax.random.bernoulli with the key's own PRNG).
    """

    rate: float
    impl: str = "hash"  # hash | jax

    @nn.compact
    def __call__(self, x: Array, deterministic: bool, rng: Array | None = None) -> Array:
        """`rng` (optional) replaces a key drawn from the "dropout" stream."""
        if deterministic or self.rate == 0.0:
            return x
        rng = self.make_rng("dropout") if rng is None else rng
        if self.impl == "jax":
            return nn.Dropout(self.rate)(x, deterministic=False, rng=rng)
        return ops.hash_dropout(x, self.rate, rng)


def _init(config: BertConfig, *axes: str | None) -> nn.initializers.Initializer:
    """BERT's truncated-normal init (std = initializer_range), with logical axis names."""
    return nn.with_logical_partitioning(
        nn.initializers.truncated_normal(config.initializer_range), axes)


def _dense(config: BertConfig, features: int, axes: tuple[str | None, str | None],
           dtype: Dtype, name: str) -> nn.Dense:
    """A Dense layer with BERT init; `axes` names the kernel's [in, out] dimensions."""
    return nn.Dense(
        features, dtype=dtype, name=name, kernel_init=_init(config, *axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)))


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with `scale` and `bias` (flax's parameter names);
    statistics in float32 (`ops.layer_norm`)."""

    epsilon: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = (x.shape[-1],)
        scale = self.param("scale", nn.with_logical_partitioning(
            nn.initializers.ones_init(), ("embed",)), features)  # [H]
        bias = self.param("bias", nn.with_logical_partitioning(
            nn.initializers.zeros_init(), ("embed",)), features)  # [H]
        return ops.layer_norm(x, scale, bias, self.epsilon).astype(self.dtype)  # [..., H]


def _layer_norm(config: BertConfig, dtype: Dtype, name: str = "LayerNorm") -> LayerNorm:
    return LayerNorm(config.layer_norm_eps, dtype, name=name)


class BertEmbeddings(nn.Module):
    """Sum of word, segment (token type) and learned position embeddings; LN; dropout."""

    config: BertConfig
    compute: Compute = Compute()

    def setup(self) -> None:
        cfg, dtype = self.config, self.compute.jnp_dtype
        self.word_embeddings = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype,
            embedding_init=_init(cfg, "vocab", "embed"))
        self.position_embeddings = nn.Embed(
            cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype,
            embedding_init=_init(cfg, None, "embed"))
        self.token_type_embeddings = nn.Embed(
            cfg.type_vocab_size, cfg.hidden_size, dtype=dtype,
            embedding_init=_init(cfg, None, "embed"))
        self.LayerNorm = _layer_norm(cfg, dtype)
        self.dropout = Dropout(cfg.hidden_dropout_prob, self.compute.dropout_impl)

    def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool) -> Array:
        seq_len = input_ids.shape[1]
        positions = jnp.arange(seq_len)[None, :]  # [1, S]
        x = (self.word_embeddings(input_ids)  # [B, S, H]
             + self.token_type_embeddings(token_type_ids)  # [B, S, H]
             + self.position_embeddings(positions))  # [1, S, H]
        x = self.LayerNorm(x)  # [B, S, H]
        x = self.dropout(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)
        self.sow("intermediates", "hidden_states", x)  # [B, S, H]
        return x


class _DenseParams(nn.Module):
    """The kernel [in, out] and bias [out] of a Dense layer, without applying it."""

    features: int
    in_features: int
    kernel_init: nn.initializers.Initializer
    bias_init: nn.initializers.Initializer

    @nn.compact
    def __call__(self) -> tuple[Array, Array]:
        kernel = self.param("kernel", self.kernel_init, (self.in_features, self.features))
        return kernel, self.param("bias", self.bias_init, (self.features,))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention over non-padding keys; returns merged heads [B, S, H].

    Q, K and V keep HF's separate `query` / `key` / `value` parameters but are computed by
    one fused [H, 3H] matmul (one larger GEMM forward, and one for the input gradient).
    `compute.attention_impl`: how softmax(QK^T/sqrt(D))V runs where the probabilities are
    not needed (`ops.fused_attention_impl`).
    """

    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array, key_mask: Array, deterministic: bool,
                 dropout_rng: Array | None = None) -> Array:
        cfg, dtype = self.config, self.compute.jnp_dtype
        batch, seq_len, hidden = x.shape
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim

        kernels, biases = zip(*(
            _DenseParams(cfg.hidden_size, hidden, _init(cfg, "embed", "heads"),
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
        fused = ops.fused_attention_impl(self.compute.attention_impl, dtype, head_dim)
        if fused and not dropout and not self.is_mutable_collection("intermediates"):
            ctx = ops.dot_product_attention(q, k, v, key_mask, fused)  # [B, S, N, D]
        else:
            # Dropout on the attention probabilities, or a probe recording them, needs them
            # materialised. The 1/sqrt(D) scale goes on q ([B, S, N, D]), not on the scores.
            mask = key_mask[:, None, None, :].astype(bool)  # [B, 1, 1, S]: query x key
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


class BertOutput(nn.Module):
    """Projection back to H, dropout, then the post-LN residual: LN(x + residual)."""

    config: BertConfig
    in_axis: str  # Logical name of the input features: "heads" or "mlp".
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array, residual: Array, deterministic: bool,
                 dropout_rng: Array | None = None) -> Array:
        cfg, dtype = self.config, self.compute.jnp_dtype
        y = ops.per_token(_dense(cfg, cfg.hidden_size, (self.in_axis, "embed"), dtype,
                                  "dense"), x)  # [B, S, H]
        y = Dropout(cfg.hidden_dropout_prob, self.compute.dropout_impl)(
            y, deterministic, dropout_rng)  # [B, S, H]
        y = _layer_norm(cfg, dtype)(y + residual)  # [B, S, H]
        return nn.with_logical_constraint(y, BATCH_LENGTH_EMBED)


class BertAttention(nn.Module):
    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array, key_mask: Array, deterministic: bool,
                 dropout_rngs: tuple[Array, Array] | None = None) -> Array:
        rngs = dropout_rngs or (None, None)
        ctx = BertSelfAttention(self.config, self.compute, name="self")(
            x, key_mask, deterministic, rngs[0])
        return BertOutput(self.config, "heads", self.compute, name="output")(
            ctx, x, deterministic, rngs[1])


class BertIntermediate(nn.Module):
    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        y = ops.per_token(_dense(cfg, cfg.intermediate_size, ("embed", "mlp"),
                                  self.compute.jnp_dtype, "dense"), x)  # [B, S, I]
        y = activation_fn(cfg.hidden_act)(y)  # [B, S, I]
        return nn.with_logical_constraint(y, BATCH_LENGTH_MLP)


class BertLayer(nn.Module):
    """Post-LN transformer encoder layer: attention -> add&LN -> FFN -> add&LN.

    Returns (output [B, S, H], None): the (carry, per-step output) of a `nn.scan` step.
    """

    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array, key_mask: Array, deterministic: bool,
                 dropout_rng: Array | None = None) -> tuple[Array, None]:
        """`dropout_rng`: this layer's dropout key (default: drawn from the "dropout" stream);
        its three dropout sites use fold_in(dropout_rng, 0 | 1 | 2)."""
        rngs = [None] * 3
        if not deterministic:
            key = self.make_rng("dropout") if dropout_rng is None else dropout_rng
            rngs = [jax.random.fold_in(key, site) for site in range(3)]
        x = BertAttention(self.config, self.compute, name="attention")(
            x, key_mask, deterministic, (rngs[0], rngs[1]))
        h = BertIntermediate(self.config, self.compute, name="intermediate")(x)  # [B, S, I]
        x = BertOutput(self.config, "mlp", self.compute, name="output")(
            h, x, deterministic, rngs[2])  # [B, S, H]
        self.sow("intermediates", "hidden_states", x)
        return x, None


LAYERS = "layers"  # The encoder's stacked layers: params and intermediates [L, ...] each.


def unstack_layers(tree: dict[str, Any]) -> dict[str, Any]:
    """{"layers": leaves [L, ...]} -> {"layer_0": leaves [...], ..., "layer_{L-1}": ...}:
    the per-layer layout of HF's names and of recorded intermediates. Other keys are kept."""
    rest = dict(tree)
    stacked = rest.pop(LAYERS)
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    return rest | {f"layer_{i}": jax.tree.map(lambda a: a[i], stacked)
                   for i in range(num_layers)}


def stack_layers(tree: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `unstack_layers`, on host arrays: {"layer_i": ...} -> {"layers": ...}."""
    rest = dict(tree)
    per_layer = []
    while f"layer_{len(per_layer)}" in rest:
        per_layer.append(rest.pop(f"layer_{len(per_layer)}"))
    return rest | {LAYERS: jax.tree.map(lambda *a: np.stack(a), *per_layer)}


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
    def __call__(self, x: Array, key_mask: Array, deterministic: bool) -> Array:
        num_layers = self.config.num_hidden_layers
        layer = BertLayer
        if self.compute.remat is not None:
            layer = nn.remat(layer, policy=self.compute.remat, prevent_cse=False,
                             static_argnums=(3,))  # 3: deterministic
        layers = nn.scan(layer, variable_axes={"params": 0, "intermediates": 0},
                         split_rngs={"params": True},
                         in_axes=(nn.broadcast, nn.broadcast, 0), length=num_layers,
                         unroll=1 if self.compute.scan else num_layers,
                         metadata_params={nn.PARTITION_NAME: "layers"})  # logical axis
        keys = None if deterministic else jax.random.split(self.make_rng("dropout"), num_layers)
        x, _ = layers(self.config, self.compute, name=LAYERS)(
            x, key_mask, deterministic, keys)  # [B, S, H]
        return x


class BertPooler(nn.Module):
    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, sequence_output: Array) -> Array:
        cls = sequence_output[:, 0]  # [B, H]
        dense = _dense(self.config, self.config.hidden_size, ("embed", "mlp"),
                       self.compute.jnp_dtype, "dense")
        return jnp.tanh(dense(cls))  # [B, H]


class BertModel(nn.Module):
    """The encoder: returns (sequence_output [B, S, H], pooled_output [B, H]); pooled_output
    is None without the pooler (`add_pooling_layer=False`, as HF's token and span heads).

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
                 deterministic: bool = True) -> tuple[Array, Array | None]:
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}); shorten data.max_seq_length")
        x = self.embeddings(input_ids, token_type_ids, deterministic)  # [B, S, H]
        x = self.encoder(x, attention_mask, deterministic)  # [B, S, H]
        return x, None if self.pooler is None else self.pooler(x)


class BertPredictionHeadTransform(nn.Module):
    """HF's `cls/predictions/transform`: dense, activation, LayerNorm."""

    config: BertConfig
    compute: Compute = Compute()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, dtype = self.config, self.compute.jnp_dtype
        x = ops.per_token(_dense(cfg, cfg.hidden_size, ("embed", "mlp"), dtype, "dense"),
                           x)  # [B, P, H]
        x = activation_fn(cfg.hidden_act)(x)
        return _layer_norm(cfg, dtype)(x)  # [B, P, H]


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
        nsp_logits = _dense(self.config, 2, ("embed", None), self.compute.jnp_dtype,
                            "seq_relationship")(pooled)  # [B, 2]
        return mlm_logits, nsp_logits.astype(jnp.float32)


class BertForPreTraining(nn.Module):
    """BERT with its MLM and NSP heads: returns (mlm_logits, nsp_logits), both float32.

    mlm_logits is [B, P, V] at `masked_positions` [B, P] when given (the transform and the
    vocabulary projection then run only there, as in google-research/bert), else
    [B, S, V]. nsp_logits is [B, 2] (label 0: B follows A; 1: B is random).
    The encoder's parameters live under `bert`, so `BertModel` can run them alone.
    `compute.fused_backward` also picks the loss's cross-entropy VJP (losses.py).
    """

    config: BertConfig
    compute: Compute = Compute()

    def setup(self) -> None:
        self.bert = BertModel(self.config, self.compute)
        self.cls = BertPreTrainingHeads(self.config, self.compute)

    def __call__(self, input_ids: Array, token_type_ids: Array, attention_mask: Array,
                 deterministic: bool = True,
                 masked_positions: Array | None = None) -> tuple[Array, Array]:
        sequence_output, pooled = self.bert(input_ids, token_type_ids, attention_mask,
                                            deterministic)  # [B, S, H], [B, H]
        if masked_positions is not None:
            sequence_output = jnp.take_along_axis(
                sequence_output, masked_positions[..., None], axis=1)  # [B, P, H]
        word_embeddings = self.bert.embeddings.word_embeddings.embedding  # [V, H]
        return self.cls(sequence_output, pooled, word_embeddings)


# ----------------------------------------------------------------------------- task heads
# HF's fine-tuning heads, same names and layouts: the encoder under `bert`, a task layer on
# top. Logits are float32.


class _TaskHead(nn.Module):
    """What the task heads share: the config, the compute choices, the encoder under `bert`."""

    config: BertConfig
    compute: Compute = Compute()

    def encoder(self, add_pooling_layer: bool) -> BertModel:
        return BertModel(self.config, self.compute, add_pooling_layer, name="bert")

    def task_layer(self, features: int, name: str) -> nn.Dense:
        return _dense(self.config, features, ("embed", None), self.compute.jnp_dtype, name)


class BertForSequenceClassification(_TaskHead):
    """One label per sentence or sentence pair: dropout + `classifier` on the pooled
    output. Returns logits [B, num_labels]."""

    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, attention_mask: Array,
                 deterministic: bool = True) -> Array:
        _, pooled = self.encoder(add_pooling_layer=True)(
            input_ids, token_type_ids, attention_mask, deterministic)  # [B, H]
        pooled = Dropout(self.config.hidden_dropout_prob, self.compute.dropout_impl)(
            pooled, deterministic)
        logits = self.task_layer(self.num_labels, "classifier")(pooled)  # [B, num_labels]
        return logits.astype(jnp.float32)


class BertForTokenClassification(_TaskHead):
    """One label per token: dropout + `classifier` on each position (no pooler, as in HF).
    Returns logits [B, S, num_labels]."""

    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, attention_mask: Array,
                 deterministic: bool = True) -> Array:
        x, _ = self.encoder(add_pooling_layer=False)(
            input_ids, token_type_ids, attention_mask, deterministic)  # [B, S, H]
        x = Dropout(self.config.hidden_dropout_prob, self.compute.dropout_impl)(x, deterministic)
        logits = ops.per_token(self.task_layer(self.num_labels, "classifier"),
                               x)  # [B, S, num_labels]
        return logits.astype(jnp.float32)


class BertForQuestionAnswering(_TaskHead):
    """Extractive QA: `qa_outputs` gives each token a span-start and a span-end logit (no
    pooler, no dropout, as in HF). Returns (start_logits, end_logits), [B, S] each."""

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, attention_mask: Array,
                 deterministic: bool = True) -> tuple[Array, Array]:
        x, _ = self.encoder(add_pooling_layer=False)(
            input_ids, token_type_ids, attention_mask, deterministic)  # [B, S, H]
        logits = ops.per_token(self.task_layer(2, "qa_outputs"), x).astype(jnp.float32)  # [B, S, 2]
        return logits[..., 0], logits[..., 1]
