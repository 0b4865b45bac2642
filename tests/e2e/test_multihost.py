"""Two processes x 4 CPU devices (jax.distributed on 127.0.0.1) train like one 8-device
process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.unit import test_train_step as t

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_8_devices():
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.multihost_worker", str(port), str(i),
                               "2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    _, reference = t.data_parallel_run()  # while the two processes start and compile
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    losses = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert len(reference) == 3
    np.testing.assert_allclose(losses[0], reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(losses[1], reference, atol=1e-5, rtol=0)
