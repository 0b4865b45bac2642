"""Workdir guards: one writer at a time (the lock), and a full disk stopping a run cleanly
(one `error:` line, the last good checkpoint kept, a bitwise-equal resume once space is
freed). The full disk is a real one: a small tmpfs, mounted as root (skipped otherwise).
A running train.py holding the lock is checked in test_checkpoint's SIGTERM test (one run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from flax_bert.errors import UserError
from flax_bert.trainer import metric_log as metrics_lib, run_folder as workdir_lib
from tests import ckpt_helpers as h
from tests.e2e.test_checkpoint import _assert_same_final_state

HOLD = ("import sys, time; from flax_bert.trainer.run_folder import WorkdirLock; "
        "lock = WorkdirLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); time.sleep(600)")
FREE_AT_SAVE = 64 * 1024  # bytes left on the tmpfs: metrics rows fit, a checkpoint does not
ATTEMPTS = 5  # failing saves tried until one has a write in flight when it fails


def _hold(workdir: str) -> subprocess.Popen:
    """Another process that holds the workdir's lock (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, workdir], cwd=h.ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _snapshot(path: str) -> dict[str, tuple]:
    """Every file's sha256 and mtime, every folder's mtime, under `path`."""
    hashes = h.tree_hash(path)
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            out[rel] = (hashes.get(rel), os.stat(full).st_mtime_ns)
    return out


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_lock_names_holder_and_is_dropped_by_kill9(tmp_path):
    workdir = str(tmp_path)
    holder = _hold(workdir)
    with pytest.raises(workdir_lib.WorkdirInUse) as e:
        workdir_lib.WorkdirLock(workdir).acquire()
    message = str(e.value)
    assert f"host {socket.gethostname()} pid {holder.pid} since" in message
    assert "wait for that run to end or stop it, or pass another --workdir" in message
    assert "\n" not in message
    holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the lock
    holder.wait()
    with workdir_lib.WorkdirLock(workdir):
        with pytest.raises(workdir_lib.WorkdirInUse, match=f"pid {os.getpid()} since"):
            workdir_lib.WorkdirLock(workdir).acquire()  # a second open file: refused too
    with workdir_lib.WorkdirLock(workdir):  # released at the end of the with-block
        pass


MULTIHOST = """
import sys
import jax
from flax_bert.trainer import run_folder as workdir
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
try:
    with workdir.locked_for_run(sys.argv[3]):
        print("locked")
except workdir.WorkdirInUse as e:
    print(e)
"""


def test_multihost_all_processes_stop_when_process_0_finds_the_lock_held(tmp_path):
    """Only process 0 locks; the others learn from it (none is left waiting)."""
    workdir = str(tmp_path)
    env = dict(os.environ, XLA_FLAGS=h.xla_flags(1), JAX_PLATFORMS="cpu")

    def run_both() -> list[str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen([sys.executable, "-c", MULTIHOST, str(port), str(i), workdir],
                                  cwd=h.ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        return [out.strip().splitlines()[-1] for out, _ in outs]

    holder = _hold(workdir)
    try:
        first, second = run_both()
    finally:
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid} since" in first
    assert second.endswith("is in use by another run (process 0 names it); wait for it or "
                           "pass another --workdir")
    assert run_both() == ["locked", "locked"]


def test_train_and_import_refused_on_a_locked_workdir(setup, reference, tmp_path):
    """train.py and `flax_bert.hf import` on a workdir in use: exit 2, one line naming the
    holder, and no file or folder of the workdir touched (contents and mtimes)."""
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    source = tmp_path / "hf_src"  # config.json only: the lock refuses before weights are read
    source.mkdir()
    shutil.copy(os.path.join(workdir, "config.json"), source)
    holder = _hold(workdir)
    try:
        before = _snapshot(workdir)
        env = h.env(8, setup["cache"])
        procs = [subprocess.Popen(cmd, cwd=h.ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for cmd in (h.command(workdir, setup["args"]),
                             [sys.executable, "-m", "flax_bert.hf", "import",
                              str(source), f"--workdir={workdir}"])]
        for proc in procs:
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 2, stderr[-3000:]
            assert len(stderr.strip().splitlines()) == 1, stderr[-3000:]
            line = _one_error_line(stderr)
            assert f"--workdir {workdir} is in use by another run (host " in line
            assert f"pid {holder.pid} since" in line
        assert _snapshot(workdir) == before
    finally:
        holder.kill()
        holder.wait()


def test_truncate_after_drops_later_and_partial_rows(tmp_path):
    writer = metrics_lib.MetricWriter(str(tmp_path))
    for step in range(1, 6):
        writer.write(step, {"loss": step / 10})
    writer.close()
    path = workdir_lib.Paths(str(tmp_path)).metrics
    with open(path, "a") as f:
        f.write('{"step": 6, "split": "tr')  # a write cut short (disk full, kill -9)
    metrics_lib.MetricWriter(str(tmp_path), enabled=False).truncate_after(9)  # disabled: no-op
    writer = metrics_lib.MetricWriter(str(tmp_path))
    writer.truncate_after(9)
    assert [r["step"] for r in metrics_lib.read_metrics(path)] == [1, 2, 3, 4, 5]
    writer.truncate_after(3)
    writer.close()
    assert [r["step"] for r in metrics_lib.read_metrics(path)] == [1, 2, 3]


# ----------------------------------------------------------------------------- full disk

TMPFS_BYTES = 16 * 2**20


@pytest.fixture
def tmpfs(tmp_path):
    """A 16 MiB tmpfs (a disk that really fills); unmounted at the end."""
    mount = str(tmp_path / "tmpfs")
    os.makedirs(mount)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", mount],
                       capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"mount -t tmpfs is not permitted here: {p.stderr.strip()}")
    if not os.path.ismount(mount) or shutil.disk_usage(mount).total > TMPFS_BYTES:
        pytest.skip(f"mount -t tmpfs exited 0 but {mount} is not a 16 MiB filesystem here "
                    f"(filling it would fill the real disk)")
    yield mount
    subprocess.run(["umount", "--lazy", mount], check=True)


def _fill(mount: str, leave: int) -> str:
    """Writes a ballast file that leaves `leave` bytes free; returns its path."""
    path = os.path.join(mount, "ballast")
    with open(path, "wb") as f:
        f.write(b"\0" * (shutil.disk_usage(mount).free - leave))
    return path


def test_disk_full_at_checkpoint_save_then_bitwise_resume(setup, reference, tmpfs):
    """The reference run as of its step-4 checkpoint, on a disk with 64 KiB left: steps 5-8
    train, the save at 8 fails before it writes (one line: step, folder, free space, the
    size needed; exit 2; no traceback), checkpoint 4 is untouched and no row after step 8
    is written. With space freed, a rerun resumes from 4 and ends bitwise equal to the
    uninterrupted reference."""
    workdir = os.path.join(tmpfs, "w")
    shutil.copytree(reference, workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    for step in ("8", "12"):
        shutil.rmtree(os.path.join(ckpt_dir, step))
    good = h.tree_hash(os.path.join(ckpt_dir, "4"))
    ballast = _fill(tmpfs, FREE_AT_SAVE)

    p = h.run(workdir, setup["args"], setup["cache"], expect_rc=2)
    line = _one_error_line(p.stderr)
    need = h.folder_bytes(os.path.join(ckpt_dir, "4")) / 2**20
    assert re.fullmatch(
        rf"error: saving checkpoint step 8 in {ckpt_dir} failed: the disk is full \(0\.\d MiB "
        rf"free, the checkpoint needs {need:.1f} MiB\); the last good checkpoint is "
        rf"{ckpt_dir}/4; free space, then rerun the same command to resume", line), line
    assert "Traceback" not in p.stderr and "orbax" not in p.stderr.replace(line, "")
    assert sorted(os.listdir(ckpt_dir)) == ["4"]
    assert h.tree_hash(os.path.join(ckpt_dir, "4")) == good
    assert sorted(h.train_rows(workdir)) == list(range(1, 9))  # it stops at the save's step

    os.remove(ballast)
    out, _ = h.train_here(workdir, setup["args"])  # the rerun, in this process
    assert f"resumed from {ckpt_dir}/4 at step 4" in out
    assert sorted(os.listdir(ckpt_dir), key=int) == ["4", "8", "12"]  # the partial 8 is gone
    _assert_same_final_state(workdir, reference)
    ref_rows, rows = h.train_rows(reference), h.train_rows(workdir)
    assert rows == ref_rows


def test_disk_full_while_writing_metrics(tmpfs, monkeypatch):
    """Rows are appended until the disk is full: the failing write is one line naming the
    step and the file, and it leaves no partial row (the next run can read the file). The
    TensorBoard events are written in the calling thread: no other thread fails."""
    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    writer = metrics_lib.MetricWriter(tmpfs)
    writer.write(1, {"loss": 1.0})
    _fill(tmpfs, 0)
    with pytest.raises(UserError) as e:
        for step in range(2, 10_000):
            writer.write(step, {"loss": 1.0, "mlm_accuracy": 0.5})
    message = str(e.value)
    assert f"writing step {step} to " in message and "the disk is full (0.0 MiB free)" in message
    assert (workdir_lib.Paths(tmpfs).metrics in message
            or os.path.join(tmpfs, "tensorboard") in message)
    assert "\n" not in message
    rows = metrics_lib.read_metrics(workdir_lib.Paths(tmpfs).metrics)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[-1]["step"] >= step - 1  # at most the failing row is missing
    with open(workdir_lib.Paths(tmpfs).metrics) as f:
        assert all(json.loads(line) for line in f)
    writer.close()  # nothing is left to write
    assert thread_errors == []


def test_async_save_failing_midway_is_one_error_and_no_straggler_traceback(tmpfs, monkeypatch):
    """A save that starts (enough room by the estimate) but fills the disk while it writes
    fails in the background: `wait` raises SaveFailed for its step; the completions of
    its other writes, landing on the event loop orbax already closed, reach no one. (Whether
    a write is still in flight when the save fails is a race: a loaded machine may finish
    them all first, so the save is tried again, on an emptied disk, until one is.)"""
    import time

    import jax.numpy as jnp
    import ml_collections
    from flax import struct

    from flax_bert.trainer import checkpoint

    @struct.dataclass
    class State:
        params: dict
        opt_state: dict
        step: int

    class Feed:
        def get_state(self) -> bytes:
            return b"{}"

    seen = []  # every unraisable error, before the checkpointer's filter
    reached = []  # those the filter lets through
    monkeypatch.setattr(sys, "unraisablehook", reached.append)
    state = State(params={f"w{i}": jnp.ones((256, 256)) for i in range(16)},  # 4 MiB
                  opt_state={"mu": jnp.zeros(2)}, step=1)
    config = ml_collections.ConfigDict(dict(every=1, keep=3, async_save=True))
    for attempt in range(ATTEMPTS):
        workdir = os.path.join(tmpfs, f"attempt{attempt}")
        ckpt = checkpoint.TrainCheckpointer(workdir, config)
        dropping = sys.unraisablehook
        monkeypatch.setattr(sys, "unraisablehook", lambda u: (seen.append(u), dropping(u)))
        monkeypatch.setattr(ckpt, "_check_space", lambda step, items: None)  # it would refuse
        ballast = _fill(tmpfs, FREE_AT_SAVE)
        with pytest.raises(checkpoint.SaveFailed) as e:
            ckpt.save(1, state, jnp.zeros(2, jnp.uint32), Feed())
            ckpt.wait()
        assert str(e.value).startswith(f"saving checkpoint step 1 in {workdir}/checkpoints "
                                       f"failed: the disk is full (0.")
        time.sleep(1.0)  # the writes still in flight complete
        print(f"attempt {attempt}: {len(seen)} unraisable errors, {len(reached)} passed on")
        if seen:
            break
        monkeypatch.setattr(sys, "unraisablehook", dropping)
        os.remove(ballast)
        shutil.rmtree(workdir)
    assert len(seen) > 0 and reached == []
