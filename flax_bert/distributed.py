"""Multi-process (multi-host) runs: joining one, and waiting for every process."""

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


def is_writer() -> bool:
    """Whether this process writes the run's shared files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process of the run gets here (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def agree(flag: bool) -> bool:
    """Process 0's `flag`, on every process (it alone reads the run folder's shared files)."""
    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))
