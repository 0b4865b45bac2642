"""Kernels written for speed on one platform, each beside the plain form it must equal.

model.py calls these where the paper's formula has a faster form on some platform:
the encoder's layer loop (scanned or unrolled), attention (its mask: padding, or the pairs
of a packed row; `jax.nn.dot_product_attention`: XLA's fused path, cuDNN flash attention on
a GPU), the dropout keep mask (an integer hash), LayerNorm (two-pass variance), Dense layers
over a [tokens, in] matrix (`per_token`), and the MLM head's fused backward passes.
tests/unit/test_ops.py and tests/unit/test_attention.py check each against its plain form.

The MLM head's tied decoder and the cross-entropy have hand-written backward passes
(`jax.custom_vjp`) because autodiff's lay out badly on XLA:CPU (see each docstring). They
take `fused=True`, the default (`config.train.fused_backward`). `fused=False` takes the
plain forms: the same numbers, differentiated by autodiff in both modes, so `jax.jvp`,
`jax.jacfwd` and `jax.hessian` work through them (a custom VJP has no forward mode).
tests/unit/test_ops.py checks that each pair agrees in value and gradient.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array

# config.train.scan_layers values (configs/default.py; checked by flax_bert.compute).
SCAN_LAYERS = ("auto", "scan", "unroll")
# config.train.attention_impl values (configs/default.py; checked by flax_bert.compute).
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "explicit")
# What cuDNN flash attention takes (jax checks it again, with an error, at lowering).
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_CUDNN_MAX_HEAD_DIM = 128  # 256 on Hopper and later; 128 holds on every cuDNN GPU.


# ---- The encoder's layer loop ----------------------------------------------------------------
def scan_layers(choice: str, remat_policy: str = "none", platform: str | None = None) -> bool:
    """Whether the encoder runs its stacked layers as a loop (True) or unrolled (False), for
    config value `choice` with `remat_policy` on `platform` (default: jax's backend).

    "auto": unrolled on the CPU without remat, where XLA fuses across the layers
    (BERT-Small's step ~5% faster, benchmarks/README.md); the loop otherwise: on GPUs and
    TPUs one layer compiled once cuts the compile time (BERT-base ~2x, large ~5x), and
    remat needs it (unrolled, XLA:CPU merges the recomputation into the forward pass and
    saves no memory). "scan" / "unroll" force one.
    """
    if choice == "auto":
        return (platform or jax.default_backend()) != "cpu" or remat_policy != "none"
    return choice == "scan"


# ---- Attention: softmax(q k^T / sqrt(D)) v over the keys each query may see ----------------
def fused_attention_impl(impl: str, dtype: Any, head_dim: int, packed: bool = False,
                         platform: str | None = None) -> str | None:
    """The `jax.nn.dot_product_attention` implementation that config value `impl` picks
    for this compute dtype and head size, for packed rows or not (`pair_ids` given), on
    `platform` (default: jax's backend); None: the explicit path (scores materialised).

    "auto": cuDNN flash attention on a GPU where it is eligible (bfloat16/float16, head
    size a multiple of 8 up to 128, rows not packed), else XLA's path (jax's own default,
    `None`, is XLA everywhere); "xla" / "cudnn" force one; "explicit" is model.py's
    einsum-softmax-einsum. Packed rows need a [B, 1, S, S] mask, which jax (0.10) hands
    cuDNN only as an additive bias whose gradient its backward pass always computes:
    "auto" takes XLA's path for them, "cudnn" that bias.
    """
    if impl == "explicit":
        return None
    if impl == "auto":
        eligible = ((platform or jax.default_backend()) == "gpu" and jnp.dtype(dtype) in _CUDNN_DTYPES
                    and head_dim % 8 == 0 and head_dim <= _CUDNN_MAX_HEAD_DIM and not packed)
        return "cudnn" if eligible else "xla"
    return impl


def key_lengths(key_mask: Array) -> Array:
    """int32 [B]: the number of non-padding keys of each row of key_mask [B, S]."""
    return jnp.sum(key_mask.astype(jnp.int32), axis=-1)


def attention_mask(key_mask: Array, pair_ids: Array | None = None) -> Array:
    """bool: where a query may attend to a key. key_mask [B, S] (1: not padding) ->
    [B, 1, 1, S], the non-padding keys; with pair_ids [B, S] (packed rows: i + 1 on the
    tokens of pair i, 0 on padding) -> [B, 1, S, S], block-diagonal: the query's own
    pair's non-padding keys. (A padding query sees no key: its softmax is uniform.)"""
    if pair_ids is None:
        return key_mask[:, None, None, :].astype(bool)  # [B, 1, 1, S]: query x key
    same_pair = pair_ids[:, :, None] == pair_ids[:, None, :]  # [B, S, S]
    return (same_pair & key_mask[:, None, :].astype(bool))[:, None]  # [B, 1, S, S]


def dot_product_attention(q: Array, k: Array, v: Array, key_mask: Array,
                          implementation: str, pair_ids: Array | None = None) -> Array:
    """Attention of q, k, v [B, S, N, D] over the keys of `attention_mask(key_mask,
    pair_ids)` -> [B, S, N, D], without the [B, N, S, S] scores in the program: XLA fuses
    them (CPU, TPU), cuDNN runs flash attention (GPU).

    cuDNN takes no [B, 1, 1, S] mask (only a bias of full [.., S, S] size), so "cudnn"
    passes the padding as key lengths: key_mask must be right padding (ones, then zeros),
    as BERT's data pipeline and tokenizers make it. Query rows stay full length, so padded
    positions get the same outputs as on the other paths. Packed rows (pair_ids) give
    cuDNN the [B, 1, S, S] mask, which jax turns into an additive bias.
    """
    if implementation == "cudnn" and pair_ids is None:
        return jax.nn.dot_product_attention(
            q, k, v, key_value_seq_lengths=key_lengths(key_mask), implementation="cudnn")
    mask = attention_mask(key_mask, pair_ids)  # [B, 1, 1 or S, S]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


# ---- Dropout keep mask: an integer hash of the element index ----------------------------
def mix32(x: Array) -> Array:
    """A 32-bit integer hash with full avalanche (Wellons' "lowbias32"); uint32 -> uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_dropout(x: Array, rate: float, rng: Array) -> Array:
    """Inverted dropout of x at `rate`, its keep mask hashed from the element index.

    All platforms: two 32-bit seeds drawn from `rng`, then (index ^ seed0) and (^ seed1)
    hashed with `mix32`: ~10 integer ops per element that XLA fuses into the consumer,
    instead of threefry's ~100 (`jax.random.bernoulli`'s bits cost ~25% of a CPU step).
    """
    seed = jax.random.bits(rng, (2,), jnp.uint32)  # [2]
    index = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)  # same shape as x
    bits = mix32(mix32(index ^ seed[0]) ^ seed[1])  # uniform uint32, shape of x
    # P(bits < threshold) = rate, to within 2**-32.
    threshold = jnp.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))
    keep_scale = jnp.asarray(1.0 / (1.0 - rate), x.dtype)
    return jnp.where(bits >= threshold, x * keep_scale, jnp.zeros((), x.dtype))


# ---- LayerNorm ------------------------------------------------------------------------
def layer_norm(x: Array, scale: Array, bias: Array, epsilon: float) -> Array:
    """LayerNorm of x [..., H] over its last axis, in (at least) float32: scale [H], bias [H].

    XLA:CPU: the two-pass variance mean((x - mean)^2), as PyTorch computes it; flax's
    nn.LayerNorm form, E[x^2] - E[x]^2, ran forward + backward 3x slower (14.4 vs 4.7 ms
    for [32, 128, 512]).
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # [..., H]
    centred = x - jnp.mean(x, axis=-1, keepdims=True)  # [..., H]
    variance = jnp.mean(centred * centred, axis=-1, keepdims=True)  # [..., 1]
    return centred * jax.lax.rsqrt(variance + epsilon) * scale + bias  # [..., H]


# ---- Dense layers over tokens -----------------------------------------------------------
def per_token(layer: Callable[[Array], Array], x: Array) -> Array:
    """Applies a Dense layer to x [..., in] as one [tokens, in] matrix -> [..., out].

    XLA:CPU: with a [B, S, in] input the weight gradient contracts two axes, which it
    lowers to a transpose copy and a slower kernel (512 -> 2048, forward + backward:
    113 ms for [32, 128, 512] vs 67 ms for [4096, 512]).
    """
    y = layer(x.reshape(-1, x.shape[-1]))  # [tokens, out]
    return y.reshape(*x.shape[:-1], y.shape[-1])


# ---- Tied MLM decoder: logits = x @ embedding.T + bias -------------------------------------
def tied_decoder(x: Array, embedding: Array, bias: Array, fused: bool = True) -> Array:
    """float32 logits [B, P, V] of x [B, P, H], embedding [V, H] and bias [V]."""
    return _tied_decoder_fused(x, embedding, bias) if fused else _tied_decoder_plain(
        x, embedding, bias)


def _tied_decoder_plain(x: Array, embedding: Array, bias: Array) -> Array:
    logits = jnp.einsum("bph,vh->bpv", x, embedding)  # [B, P, V]
    return logits.astype(jnp.float32) + bias


@jax.custom_vjp
def _tied_decoder_fused(x: Array, embedding: Array, bias: Array) -> Array:
    """XLA:CPU: autodiff's weight gradient contracts two axes (B, P) and its bias gradient
    is a separate column sum; here both contract one [B*P] token axis, and the bias
    gradient is a vector-matrix product."""
    return _tied_decoder_plain(x, embedding, bias)


def _tied_decoder_fwd(x: Array, embedding: Array, bias: Array):
    return _tied_decoder_plain(x, embedding, bias), (x, embedding)


def _tied_decoder_bwd(residuals, d_logits: Array):
    x, embedding = residuals  # [B, P, H], [V, H]
    d_logits = d_logits.reshape(-1, embedding.shape[0])  # [B*P, V], float32
    d_bias = jnp.ones((1, d_logits.shape[0]), d_logits.dtype) @ d_logits  # [1, V]
    d_logits = d_logits.astype(x.dtype)  # the compute dtype, for the two GEMMs
    tokens = x.reshape(-1, x.shape[-1])  # [B*P, H]
    d_x = (d_logits @ embedding).reshape(x.shape)  # [B, P, H]
    d_embedding = jnp.einsum("tv,th->vh", d_logits, tokens)  # [V, H]
    return d_x, d_embedding, d_bias[0]


_tied_decoder_fused.defvjp(_tied_decoder_fwd, _tied_decoder_bwd)


# ---- Cross-entropy and hit ----------------------------------------------------------------
def cross_entropy_and_hit(logits: Array, labels: Array, fused: bool = True
                          ) -> tuple[Array, Array]:
    """Per-item cross-entropy and hit (1.0 where the label's logit is the largest).

    logits [..., C] float32, labels [...] int -> (nll [...], hit [...]). A hit is
    `logits[label] >= max(logits)` (an exact tie counts as a hit) rather than
    `argmax == label`, which would cost another pass over the logits. A hit has no gradient.
    """
    fn = _cross_entropy_fused if fused else _cross_entropy_plain
    return fn(logits, labels)


def _cross_entropy_parts(logits: Array, labels: Array) -> tuple[Array, Array, Array]:
    """The row max, log-sum-exp and label logit, [..., 1] each."""
    top = jnp.max(logits, axis=-1, keepdims=True)  # [..., 1]
    lse = top + jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1, keepdims=True))  # [..., 1]
    target = jnp.take_along_axis(logits, labels[..., None], axis=-1)  # [..., 1]
    return top, lse, target


def _cross_entropy_plain(logits: Array, labels: Array) -> tuple[Array, Array]:
    top, lse, target = _cross_entropy_parts(logits, labels)
    return (lse - target)[..., 0], (target >= top)[..., 0].astype(logits.dtype)  # [...]


@jax.custom_vjp
def _cross_entropy_fused(logits: Array, labels: Array) -> tuple[Array, Array]:
    """XLA:CPU: the gradient is written out (softmax - one_hot, one fused pass over the
    logits) instead of autodiff's log_softmax -> gather transpose, which costs a zero
    [..., C] buffer, a scatter and a second pass."""
    return _cross_entropy_plain(logits, labels)


def _cross_entropy_fwd(logits: Array, labels: Array):
    top, lse, target = _cross_entropy_parts(logits, labels)
    nll, hit = (lse - target)[..., 0], (target >= top)[..., 0].astype(logits.dtype)  # [...]
    return (nll, hit), (logits, lse, labels)


def _cross_entropy_bwd(residuals, cotangents):
    logits, lse, labels = residuals  # [..., C], [..., 1], [...]
    d_nll, _ = cotangents  # [...]; a hit has no gradient.
    one_hot = labels[..., None] == jax.lax.broadcasted_iota(labels.dtype, logits.shape,
                                                            logits.ndim - 1)  # [..., C]
    d_logits = (jnp.exp(logits - lse) - one_hot) * d_nll[..., None]  # [..., C]
    return d_logits, None


_cross_entropy_fused.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)
