"""Metric writers: metrics.jsonl, TensorBoard event files and PNG curves, in the run folder.

Only the writing process (process 0) creates files; other processes get a writer whose
calls do nothing, so the loop needs no `if process_index == 0` of its own. tensorboardX is
imported only when TensorBoard is on (it imports torch where torch is installed: seconds).
Its events are written in the calling thread (not SummaryWriter's background thread), so
a full disk is one error naming the step, not a traceback from another thread.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

from flax_bert import files
from flax_bert.errors import UserError
from flax_bert.trainer import run_folder as workdir_lib


class MetricWriter:
    """Appends one JSON object per logged step; mirrors scalars to TensorBoard when
    `tensorboard` is on."""

    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.paths = workdir_lib.Paths(workdir)
        self.path = self.paths.metrics
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX.event_file_writer import EventsWriter
            os.makedirs(self.paths.tensorboard, exist_ok=True)
            self._tb = EventsWriter(os.path.join(self.paths.tensorboard, "events"))

    def write(self, step: int, scalars: Mapping[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in scalars.items()}}
        data = (json.dumps(row) + "\n").encode()
        with open(self.path, "ab", buffering=0) as f:  # unbuffered: a failed write is seen
            end = f.seek(0, os.SEEK_END)
            try:
                while data:
                    data = data[f.write(data):]
            except OSError as e:
                f.truncate(end)  # no partial row left behind (truncating needs no space)
                raise self._failed(step, self.path, e) from e
        if self._tb is None:
            return
        from tensorboardX import summary
        from tensorboardX.proto.event_pb2 import Event
        try:
            for name, value in scalars.items():
                self._tb.write_event(Event(wall_time=time.time(), step=int(step),
                                           summary=summary.scalar(f"{split}/{name}", value)))
            self._tb.flush()
        except OSError as e:
            raise self._failed(step, self.paths.tensorboard, e) from e

    def _failed(self, step: int, path: str, error: OSError) -> UserError:
        cause = "the disk is full" if workdir_lib.is_disk_full(error) else error.strerror
        return UserError(
            f"writing step {step} to {path} failed: {cause} ({workdir_lib.free_space(path)}); "
            f"the rows and checkpoints before are kept; free space, then rerun the same "
            f"command to resume")

    def truncate_after(self, step: int) -> None:
        """Drops rows past `step` and the eval row of `step` (a resumed run rewrites the
        steps after its checkpoint, and evaluates its checkpoint's step again: a stop may
        have cut that eval), and a partial last row (a write cut short). Rows are in step
        order: the file is cut at the first row to drop, in place (no space needed,
        nothing rewritten)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path, "r+b") as f:
            keep = 0
            for line in f:
                try:
                    row = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    row = None
                if row is None or (row["step"], row["split"] == "eval") > (step, False):
                    break
                keep += len(line)
            f.truncate(keep)

    def close(self) -> None:
        if self._tb is not None:
            try:
                self._tb.close()
            except OSError:  # events left by a failed write, which raised the error already
                pass


def read_metrics(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_row(path: str, step: int) -> dict | None:
    """The eval row of `step` in the metrics file `path` (None: none, or no file)."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    for line in reversed(lines):  # rows are in step order: read from the end
        try:
            row = json.loads(line)
        except ValueError:  # a row cut short
            continue
        if row["step"] < step:
            return None
        if row["step"] == step and row["split"] == "eval":
            return row
    return None


def plot_curves(workdir: str, plots: tuple, more_rows: tuple[dict, ...] = ()) -> list[str]:
    """Writes one PNG per (name, metric keys) of `plots` (WORKDIR/<name>.png, y label
    <name>; a task's `plots`) from metrics.jsonl and `more_rows` (rows not written yet);
    returns their paths. Each file is replaced whole."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = workdir_lib.Paths(workdir)
    rows = read_metrics(run.metrics) + list(more_rows)
    paths = []
    for name, keys in plots:
        fig, ax = plt.subplots(figsize=(7, 4))
        for split, style in (("train", "-"), ("eval", "o--")):
            for key in keys:
                points = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, style, label=f"{split} {key}")
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = run.plot(name)
        with files.replacing(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        paths.append(path)
    return paths
