"""One process of a two-process run (tests/e2e/test_multihost.py starts two of these).

Usage (from the repo root): python -m tests.multihost_worker PORT PROCESS_ID NUM_PROCESSES
Each process has 4 CPU devices; together they form one 8-device mesh. Prints the losses
of a few train steps as JSON on its last line.
"""

import json
import os
import sys

from tools.runs import xla_flags

os.environ["XLA_FLAGS"] = xla_flags(4)  # read when jax's backend starts
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import ml_collections  # noqa: E402


def main() -> None:
    port, process_id, num_processes = (int(a) for a in sys.argv[1:4])
    from flax_bert import distributed
    distributed.maybe_initialize(ml_collections.ConfigDict({
        "coordinator_address": f"127.0.0.1:{port}", "num_processes": num_processes,
        "process_id": process_id}))
    from tests.unit import test_train_step as t  # the same model, batches and optimizer
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    _, losses = t.data_parallel_run()
    print(json.dumps(losses))


if __name__ == "__main__":
    main()
