"""The most expensive XLA ops of a `jax.profiler` trace (its perfetto_trace.json.gz), each
with the JAX operation it came from.

On the CPU the timed events are XLA:CPU thunks on the host threads; on a GPU they are the
kernels on the device's streams (CUPTI), and the host's launch spans are left out. Either
way an event names its HLO instruction in `args.hlo_op`, which the compiled HLO text maps
to a shape and the JAX op (`op_name` metadata)."""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from typing import Any, NamedTuple

DEVICE_PROCESS = re.compile(r"/device:(GPU|TPU)")  # process_name of a device's timeline


class Op(NamedTuple):
    hlo_op: str
    total_us: float  # summed over the trace
    kernels: tuple[str, ...]  # the events' names, most expensive first (on CPU: the op)


def load_events(trace_dir: str) -> list[dict[str, Any]]:
    """The events of the one perfetto trace `jax.profiler.trace(trace_dir,
    create_perfetto_trace=True)` wrote."""
    path, = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
        events = json.load(f)
    return events["traceEvents"] if isinstance(events, dict) else events


def process_names(events: list[dict[str, Any]]) -> dict[Any, str]:
    """{pid: process name} from the trace's metadata events."""
    return {e["pid"]: str(e.get("args", {}).get("name", "")) for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name"}


def top_ops(events: list[dict[str, Any]]) -> tuple[list[Op], bool]:
    """(ops by total time, most expensive first; whether they are device kernels). Only
    complete events ('X') that name an HLO op count; where the trace has a device
    timeline, only its events."""
    device_pids = {pid for pid, name in process_names(events).items()
                   if DEVICE_PROCESS.search(name)}
    total_us: collections.Counter = collections.Counter()
    kernels: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for e in events:
        hlo_op = e.get("args", {}).get("hlo_op")
        if (e.get("ph") != "X" or not hlo_op or "dur" not in e
                or (device_pids and e.get("pid") not in device_pids)):
            continue
        total_us[hlo_op] += float(e["dur"])
        kernels[hlo_op][e.get("name", hlo_op)] += float(e["dur"])
    ops = [Op(name, us, tuple(k for k, _ in kernels[name].most_common()))
           for name, us in total_us.most_common()]
    return ops, bool(device_pids)


def hlo_origin(hlo_op: str, hlo_text: str) -> tuple[str, str]:
    """(result shape, JAX op name without the jit/transform prefix) of `%hlo_op` in the
    compiled HLO text; empty strings where it has no metadata."""
    m = re.search(rf"%{re.escape(hlo_op)} = (\S+) .*?op_name=\"([^\"]*)\"", hlo_text)
    return (m.group(1), m.group(2).split(")/", 1)[-1]) if m else ("", "")
