"""How the model computes, as one frozen value: precision, memory and kernel choices.

`Compute` never changes what the model is (its parameters and outputs, up to float
rounding); it changes how fast it runs and how much memory it takes. A run's value comes
from config.train (`Compute.from_config`, checked once, before anything is prepared or
compiled); every model class takes it as its one `compute` field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from flax_bert import ops
from flax_bert.errors import UserError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# jax.checkpoint policies of config.train.remat_policy ("none": no remat).
REMAT_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}
DROPOUT_IMPLS = ("hash", "jax")  # see layers.Dropout
# Each field's allowed values; the first is the default.
CHOICES = {
    "dtype": tuple(DTYPES),
    "remat_policy": ("none", *REMAT_POLICIES),
    "dropout_impl": DROPOUT_IMPLS,
    "attention_impl": ops.ATTENTION_IMPLS,
    "scan_layers": ops.SCAN_LAYERS,
}


@dataclasses.dataclass(frozen=True)
class Compute:
    """config.train's compute fields (configs/default.py says what each does)."""

    dtype: str = "float32"  # compute dtype; parameters stay float32
    remat_policy: str = "none"  # per encoder layer
    dropout_impl: str = "hash"  # the dropout keep mask's bits
    attention_impl: str = "auto"  # softmax(QK^T)V where the probabilities are not needed
    scan_layers: str = "auto"  # the encoder's layer loop: scanned or unrolled
    fused_backward: bool = True  # the MLM head's hand-written VJPs (flax_bert/ops.py)
    # The platform the "auto" choices are made for: "" is jax's default backend; the
    # ahead-of-time check (flax_bert/aot.py) compiles for "tpu" from a CPU host.
    platform: str = ""

    def __post_init__(self) -> None:
        for field, allowed in CHOICES.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r} is unknown; use one of: "
                                 f"{', '.join(allowed)}")

    @classmethod
    def from_config(cls, train_config: Any) -> Compute:
        """The value of config.train's fields (absent ones take the defaults); a field
        outside its choices is a UserError naming it."""
        values = {f.name: train_config.get(f.name, f.default) for f in dataclasses.fields(cls)}
        for field, allowed in CHOICES.items():
            if values[field] not in allowed:
                raise UserError(f"config.train.{field}={values[field]!r} is unknown; use one "
                                f"of: {', '.join(allowed)}")
        return cls(**values)

    @property
    def jnp_dtype(self) -> Any:
        return DTYPES[self.dtype]

    @property
    def remat(self) -> Any | None:
        """The jax.checkpoint policy of each encoder layer, or None (no remat)."""
        return REMAT_POLICIES.get(self.remat_policy)

    @property
    def scan(self) -> bool:
        """Whether the encoder runs its layers as a loop here (see ops.scan_layers)."""
        return ops.scan_layers(self.scan_layers, self.remat_policy, self.platform or None)
