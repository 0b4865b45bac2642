"""Multi-process (multi-host) setup."""

from __future__ import annotations

import jax
import ml_collections


def maybe_initialize(dist: ml_collections.ConfigDict) -> None:
    """Joins a multi-process run when one is configured; call before any other JAX use.

    Each process then sees all devices of the run in `jax.devices()` and its own in
    `jax.local_devices()`; one Mesh spans them all.
    """
    if dist.num_processes <= 1 and not dist.coordinator_address:
        return
    # CPU hosts need an explicit collectives backend; GPU/TPU ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=dist.coordinator_address or None,
                               num_processes=dist.num_processes, process_id=dist.process_id)
