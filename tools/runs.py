"""Tiny train.py runs and what watches them, shared by the harnesses here (chaos) and the
tests: the runs' flags (TINY), command line and XLA flags; a run folder's file hashes and
checkpoint items; the live processes below a run."""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where train.py is
STEPS = 12
EVERY = 4
TINY = [
    "--config.model.hidden_size=32", "--config.model.num_hidden_layers=1",
    "--config.model.num_attention_heads=2", "--config.model.intermediate_size=64",
    "--config.data.max_seq_length=32", "--config.data.vocab_size=200",
    "--config.train.global_batch_size=8", "--config.train.log_every=1",
    "--config.train.phase1_fraction=0",
    "--config.train.eval_every=0", "--config.train.eval_batches=1",
    "--config.mesh.fsdp=4", f"--config.train.steps={STEPS}",
    f"--config.checkpoint.every={EVERY}", "--config.checkpoint.keep=3",
    "--config.train.tensorboard=False",  # no tensorboardX (and the torch it imports): ~4 s
]
DEVICES_FLAG = "--xla_force_host_platform_device_count"


def xla_flags(devices: int) -> str:
    """This process's XLA_FLAGS (in the tests, tests/conftest.py's) with `devices` host CPU
    devices: a process started with them compiles as the tests do (the same cache keys)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith(DEVICES_FLAG + "=")]
    return " ".join([*flags, f"{DEVICES_FLAG}={devices}"])


def command(workdir: str, args: list[str]) -> list[str]:
    """The train.py command line of a run in `workdir` (to run in ROOT)."""
    return [sys.executable, "train.py", f"--workdir={workdir}", *args]


def restore_item(workdir: str, step: int, item: str) -> Any:
    """One item (params, opt_state, train) of a checkpoint as NumPy arrays."""
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(os.path.join(workdir, "checkpoints", str(step), item))
    return jax.tree.map(np.asarray, tree)


def tree_hash(path: str) -> dict[str, str]:
    """sha256 of every file under `path` (by relative path)."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first); None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of every live process below `pid`."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat(int(name))):
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = {}, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if fields := _stat(child):
            out[child] = fields[19]
            todo += children.get(child, [])
    return out


def alive(processes: dict[int, str]) -> list[int]:
    """Those of `processes` still running (same PID and start time; zombies count as gone)."""
    return [pid for pid, start in processes.items()
            if (fields := _stat(pid)) and fields[19] == start and fields[0] != "Z"]
