"""Checkpoints of train.py runs: exact resume, kill -9, broken newest checkpoint, SIGTERM,
restore on another device count, params-only loading. Tiny model, 12 steps, subprocesses."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from flax_bert.errors import Interrupted
from flax_bert.trainer import checkpoint, run_folder as workdir_lib
from tests import ckpt_helpers as h

K = 5  # stop_after step of the interrupted runs (between saves at 4 and 8)


@pytest.fixture(scope="module")
def stopped(setup) -> str:
    """A run of the same command stopped after step K (checkpoint at K); left unresumed.
    (Run in this process, as the resumes that check the state alone; the stop and resume
    of a train.py process are checked in the kill -9, SIGTERM and device-count tests.)"""
    workdir = str(setup["root"] / "stopped")
    with pytest.raises(Interrupted, match=f"stopped after step {K}"):
        h.train_here(workdir, setup["args"] + [f"--config.train.stop_after={K}"])
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", str(K)]
    return workdir


def _assert_same_final_state(workdir: str, reference: str) -> None:
    for item in ("params", "opt_state", "train"):
        h.assert_bitwise(h.restore_item(workdir, h.STEPS, item),
                         h.restore_item(reference, h.STEPS, item))


def test_exact_resume(setup, reference, stopped):
    workdir = str(setup["root"] / "resumed")
    shutil.copytree(stopped, workdir)
    out, _ = h.train_here(workdir, setup["args"])
    assert f"resumed from {workdir}/checkpoints/{K} at step {K}" in out
    _assert_same_final_state(workdir, reference)
    rows, ref_rows = h.train_rows(workdir), h.train_rows(reference)
    assert sorted(rows) == list(range(1, h.STEPS + 1))
    for step in range(K + 1, h.STEPS + 1):  # per-step losses after K: bitwise equal
        assert rows[step] == ref_rows[step], step


def test_rerun_of_a_finished_run_says_so_and_changes_nothing(setup, reference, tmp_path):
    workdir = str(tmp_path / "finished")
    shutil.copytree(reference, workdir)
    before = h.tree_hash(workdir)
    out, _ = h.train_here(workdir, setup["args"])
    assert f"{workdir} has finished its {h.STEPS} steps" in out
    after = h.tree_hash(workdir)
    assert after.pop(workdir_lib.LOCK_FILE) and before.pop(workdir_lib.LOCK_FILE)
    assert after == before  # no second final eval row, no file rewritten


def test_steps_per_call_match_single_steps_and_resume(setup, reference):
    """4 steps per call, stopped at step 5 and resumed (calls of 4, 1 | 3, 4 steps: each
    is cut to end on the stop and checkpoint steps), ends in the same state, bit for bit,
    as the reference's one step per call."""
    workdir = str(setup["root"] / "per_call")
    args = setup["args"] + ["--config.train.steps_per_call=4", "--config.train.log_every=4"]
    with pytest.raises(Interrupted, match=f"stopped after step {K}"):
        h.train_here(workdir, args + [f"--config.train.stop_after={K}"])
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", str(K)]
    out, _ = h.train_here(workdir, args)
    assert f"resumed from {workdir}/checkpoints/{K} at step {K}" in out
    _assert_same_final_state(workdir, reference)
    assert sorted(h.train_rows(workdir)) == [4, 8, 12]


def _wait(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """Polls `ready()` every ms until true (-> True) or the process exits (-> False)."""
    end = time.time() + timeout
    while time.time() < end:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    raise TimeoutError


def test_kill9_mid_training_and_mid_save_then_resume(setup, reference):
    workdir = str(setup["root"] / "killed")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    metrics = os.path.join(workdir, "metrics.jsonl")
    args = setup["args"] + ["--config.checkpoint.every=1"]  # a save every step to hit
    env = h.env(8, setup["cache"])
    popen = lambda: subprocess.Popen(h.command(workdir, args), cwd=h.ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def rows() -> int:
        try:
            with open(metrics) as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    # 1. SIGKILL at a random step.
    kill_at = random.Random(1).randint(2, 6)
    proc = popen()
    assert _wait(proc, lambda: rows() >= kill_at)
    proc.kill()
    proc.wait()
    # 2. Rerun; SIGKILL while an async save is in flight (orbax's tmp folder exists).
    in_flight = lambda: os.path.isdir(ckpt_dir) and any(
        "tmp" in name for name in os.listdir(ckpt_dir))
    start_rows = rows()
    proc = popen()
    hit = _wait(proc, lambda: rows() > start_rows and in_flight())
    proc.kill()
    proc.wait()
    assert hit, "the run ended before a save was caught in flight"
    # 3. Rerun to the end (saving as the reference does: the state does not depend on it).
    p = h.run(workdir, setup["args"], setup["cache"])
    assert "resumed from" in p.stdout
    _assert_same_final_state(workdir, reference)
    assert not [n for n in os.listdir(ckpt_dir) if "tmp" in n]


# orbax's restore of the truncated checkpoint fails with reads in flight; their coroutines
# and event loop are collected later, in this process (an unraisable warning each).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_broken_checkpoints_fall_back(setup, reference):
    """Newest (12) truncated, next (8) missing a file: warns twice, resumes from 4, keeps 4."""
    workdir = str(setup["root"] / "broken")
    shutil.copytree(reference, workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    assert sorted(os.listdir(ckpt_dir), key=int) == ["4", "8", "12"]
    good = h.tree_hash(os.path.join(ckpt_dir, "4"))
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ckpt_dir, "12", "params"))
             for f in fs]
    biggest = max(files, key=os.path.getsize)  # an array data file
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    os.remove(os.path.join(ckpt_dir, "8", "opt_state", "manifest.ocdbt"))
    # load_params reads only `params`: it skips 12 and reads 8's intact params.
    h.assert_bitwise(checkpoint.load_params(workdir), h.restore_item(reference, 8, "params"))
    out, err = h.train_here(workdir, setup["args"])
    assert "/12 is broken" in err and "/8 is broken" in err, err
    assert f"resumed from {ckpt_dir}/4 at step 4" in out
    assert h.tree_hash(os.path.join(ckpt_dir, "4")) == good  # the good checkpoint untouched
    broken = sorted(os.listdir(workdir_lib.Paths(workdir).broken_checkpoints))
    assert [name.split("-")[0] for name in broken] == ["12", "8"]  # moved aside, not deleted
    _assert_same_final_state(workdir, reference)  # steps 5..12 retrained identically
    assert sorted(os.listdir(ckpt_dir), key=int) == ["4", "8", "12"]


def test_sigterm_saves_current_step_and_frees_the_lock(setup):
    """A running train.py holds the workdir's lock; SIGTERM saves a checkpoint at the
    current step, exits 128 + SIGTERM and frees the lock."""
    workdir = str(setup["root"] / "sigterm")
    args = setup["args"] + ["--config.train.steps=400", "--config.checkpoint.every=1000"]
    proc = subprocess.Popen(h.command(workdir, args), cwd=h.ROOT, env=h.env(8, setup["cache"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    assert _wait(proc, lambda: os.path.exists(metrics) and os.path.getsize(metrics) > 0)
    with pytest.raises(workdir_lib.WorkdirInUse, match=f"pid {proc.pid} since"):
        workdir_lib.WorkdirLock(workdir).acquire()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))]
    last_logged = max(h.train_rows(workdir))
    assert steps == [last_logged] and 0 < last_logged < 400  # saved at the current step
    assert f"interrupted (SIGTERM) at step {last_logged}; checkpoint saved" in err
    assert "Traceback" not in err
    with workdir_lib.WorkdirLock(workdir):  # free once the run has ended
        pass


def test_load_params_reads_no_optimizer_state(reference, tmp_path):
    """Params-only loading: works with the optimizer state (and data state) deleted."""
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    for step in os.listdir(os.path.join(workdir, "checkpoints")):
        for item in ("opt_state", "data", "train"):
            shutil.rmtree(os.path.join(workdir, "checkpoints", step, item))
    params = checkpoint.load_params(workdir)
    h.assert_bitwise(params, h.restore_item(reference, h.STEPS, "params"))
    h.assert_bitwise(checkpoint.load_params(os.path.join(workdir, "checkpoints", "12")), params)
    assert checkpoint.load_config(workdir).hidden_size == 32
    # Export dir round trip (what `pretrained/` and HF import use).
    checkpoint.save_params(str(tmp_path / "export"), checkpoint.load_config(workdir), params)
    h.assert_bitwise(checkpoint.load_params(str(tmp_path / "export")), params)


@pytest.mark.parametrize("devices,mesh", [(1, ["--config.mesh.fsdp=1"])])
def test_restore_on_fewer_devices(setup, reference, stopped, devices, mesh):
    """Saved on 8 devices (data=2 x fsdp=4) at step K, resumed on 1 device (4 works alike): trains on
    to the end and matches the 8-device run to float32 rounding (reductions are split
    differently over devices, so not bitwise)."""
    workdir = str(setup["root"] / f"devices{devices}")
    shutil.copytree(stopped, workdir)
    p = h.run(workdir, setup["args"] + mesh, setup["cache"], devices=devices)
    assert f"resumed from {workdir}/checkpoints/{K} at step {K}" in p.stdout
    final = h.restore_item(workdir, h.STEPS, "params")
    diff = h.max_abs_diff(final, h.restore_item(reference, h.STEPS, "params"))
    print(f"devices={devices}: max |params - 8-device params| = {diff:.3g}")
    assert diff <= 1e-5
    rows, ref_rows = h.train_rows(workdir), h.train_rows(reference)
    np.testing.assert_allclose(rows[K + 1]["loss"], ref_rows[K + 1]["loss"], rtol=1e-6)


class _FakeCheckpointer:
    directory = "/w/checkpoints"
    closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("limit,per_call,log_every", [(1, 1, 1), (3, 1, 2), (3, 2, 4),
                                                      (3, 4, 8)])
def test_nonfinite_guard_stops_at_the_configured_count(limit, per_call, log_every):
    """The loop leaves each call's skip flags on the device and checks them at log steps;
    the stop comes at the first check after the run of skipped steps reaches the limit (a
    finite step resets the count), also when the run spans calls of several steps, and
    names the steps of that run."""
    from flax_bert.errors import UserError
    from flax_bert.trainer.loop import NonfiniteGuard

    # A run of limit-1 skips (reset by a finite step), then a run of `limit` skips.
    flags = [0, 0] + [1] * (limit - 1) + [0] + [1] * limit + [0] * (2 * log_every)
    first_bad = limit + 3
    last = first_bad + limit - 1
    ckpt = _FakeCheckpointer()
    guard = NonfiniteGuard(0, limit, ckpt)
    with pytest.raises(UserError) as e:
        for first in range(1, len(flags) + 1, per_call):
            done = first + per_call - 1  # the call of steps first..done
            guard.push(first, np.float32(flags[first - 1:done]))
            if done % log_every == 0:
                guard.check()
        guard.check()
    # Raised at the first log step at or after `last`: no host sync between.
    assert done == -(-last // log_every) * log_every
    assert f"for {limit} consecutive steps (steps {first_bad}-{last} skipped" in str(e.value)
    assert ckpt.closed and "\n" not in str(e.value)
