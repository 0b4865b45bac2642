"""Kernels written for speed on one platform, each beside the plain form it must equal.

The MLM head's tied decoder and the cross-entropy have hand-written backward passes
(`jax.custom_vjp`) because autodiff's lay out badly on XLA:CPU (see each docstring). They
take `fused=True`, the default (`config.train.fused_backward`). `fused=False` takes the
plain forms: the same numbers, differentiated by autodiff in both modes, so `jax.jvp`,
`jax.jacfwd` and `jax.hessian` work through them (a custom VJP has no forward mode).
tests/test_ops.py checks that each pair agrees in value and gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


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
