"""Device mesh and the logical-axis rules that place parameters and activations on it.

Parameters are annotated with logical axis names in flax_bert/model.py. This table is the
only place that says which mesh axis each name is split over, so data parallel, FSDP and
tensor parallel are mesh shapes in the config, not code paths:
  data=8              pure data parallel (parameters replicated)
  data=2, fsdp=4      parameters and optimizer state split 4 ways along `embed`
  data=4, tensor=2    attention heads, MLP hidden units and vocab split 2 ways
On several TPU slices (multi-slice: devices with a `slice_index`), the data axis spans the
slices over the data-center network (DCN) and fsdp / tensor stay inside a slice (ICI), so
the one collective between slices is the gradient reduction over `data`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flax_bert.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_AXIS_RULES = (
    # Weights.
    ("layers", None),  # the encoder's stacked layers (scanned over, never split)
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    # Activations.
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """The (data, fsdp, tensor) sizes over `num_devices` devices, -1 (at most one) taking
    the rest; a shape that does not fit them is a UserError (each size's own range is
    flax_bert/config_ranges.py's). Checked as soon as the device count is known."""
    shape = [mesh_config.data, mesh_config.fsdp, mesh_config.tensor]
    given = dict(zip(MESH_AXES, shape))
    if shape.count(-1) > 1:
        raise UserError(f"config.mesh {given}: at most one size may be -1 (the rest of the "
                        f"devices); set the others")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if num_devices % known:
            raise UserError(f"config.mesh {given}: {num_devices} devices do not split into "
                            f"{known} x the rest; make the given sizes' product divide "
                            f"{num_devices}")
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise UserError(f"config.mesh {given} needs {int(np.prod(shape))} devices, but there "
                        f"are {num_devices}; make the sizes' product {num_devices} (or set "
                        f"one to -1)")
    return tuple(shape)


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: list[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one axis may be -1 (the rest)."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_config, len(devices))
    # Auto axes: XLA propagates shardings from the annotated parameters and constraints.
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    slices = num_slices(devices)
    if slices > 1:
        if shape[0] % slices:
            raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))}: data must be a "
                             f"multiple of the {slices} slices (data parallelism crosses "
                             f"slices; fsdp and tensor stay inside one)")
        grid = mesh_utils.create_hybrid_device_mesh(
            (shape[0] // slices, shape[1], shape[2]), (slices, 1, 1), devices,
            allow_split_physical_axes=True)  # [data, fsdp, tensor], slice-major on data
        return Mesh(grid, MESH_AXES, axis_types=axis_types)
    return jax.make_mesh(tuple(shape), MESH_AXES, devices=devices, axis_types=axis_types)


def num_slices(devices: list[jax.Device]) -> int:
    """The TPU slices `devices` span (1 off TPU, or on one slice)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def logical_shardings(logical_specs: Any, mesh: Mesh) -> Any:
    """Pytree of logical PartitionSpecs -> pytree of NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
    """Examples split over data x fsdp; everything else in a batch array is replicated.
    `stacked`: the arrays are [steps, batch, ...] (several steps' batches, see
    steps.train_steps)."""
    return NamedSharding(mesh, PartitionSpec(*((None,) if stacked else ()), BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
