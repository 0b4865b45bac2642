"""One stop of tools/chaos.py: a train.py process watched line by line (`Run`), the
stage it is in (`observe`, stages as chaos.py's docstring names them), the signal, and
what the stop broke of the expectations (`expectations`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from typing import Any

from flax_bert.trainer.run_folder import Paths
from tools import runs

STEPS, EVAL_EVERY = 12, 4  # the chaos run's train steps and eval period
EXIT_LIMIT_S = 10.0  # SIGTERM -> exit, every stage
HANG_S = 60.0  # a stopped run still alive after this is killed and reported as hung
RESUME_HINT = "rerun the same command"
QUICK = "quick"  # a second signal shortly after the previous stop's rerun started
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}


class Run:
    """One train.py process; its stdout and stderr lines (split at \\r too: the progress
    bar) are read as they come. The line being written (the progress bar's, which ends
    only at its next update) is seen too."""

    def __init__(self, workdir: str, args: list[str], env: dict[str, str]):
        self.workdir = workdir
        self.tmp0 = set(checkpoints(workdir)[1])  # a killed save's, deleted at the start
        self.final_rows0 = len([r for r in rows(workdir)
                                if r["split"] == "eval" and r["step"] == STEPS])
        self.data0 = os.path.isdir(Paths(workdir).prepared)
        self.wall0 = time.time()
        self.proc = subprocess.Popen(runs.command(workdir, args), cwd=runs.ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.start = time.monotonic()
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.stamps: dict[str, list[float]] = {"stdout": [], "stderr": []}  # when each came
        self.partial: dict[str, str] = {"stdout": "", "stderr": ""}  # no line end yet
        self.closed: dict[str, float] = {}
        self._readers = [threading.Thread(target=self._read, args=(name,), daemon=True)
                         for name in self.lines]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str) -> None:
        stream, rest = getattr(self.proc, name), b""
        while chunk := stream.read1(1 << 16):
            *done, rest = (rest + chunk).replace(b"\r", b"\n").split(b"\n")
            done = [line.decode(errors="replace") for line in done if line.strip()]
            self.stamps[name] += [time.monotonic()] * len(done)
            self.lines[name] += done
            self.partial[name] = rest.decode(errors="replace")
        if rest.strip():
            self.lines[name].append(rest.decode(errors="replace"))
        self.partial[name] = ""
        self.closed[name] = time.monotonic()

    def saw(self, text: str, name: str = "stderr") -> bool:
        return any(text in line for line in [*self.lines[name], self.partial[name]])

    def resumed_step(self) -> int:
        for line in list(self.lines["stdout"]):
            if line.startswith("resumed from ") and " at step " in line:
                return int(line.rsplit(" ", 1)[1])
        return 0

    def wait_closed(self, timeout: float) -> float | None:
        """Seconds from the start to both pipes closed (no process holds them), or None
        if they are still open `timeout` seconds from now."""
        end = time.monotonic() + timeout
        for reader in self._readers:
            reader.join(max(0.0, end - time.monotonic()))
        return max(self.closed.values()) - self.start if len(self.closed) == 2 else None


def rows(workdir: str) -> list[dict[str, Any]]:
    """metrics.jsonl's whole rows."""
    try:
        with open(Paths(workdir).metrics, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:  # a row being written has no newline yet
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def checkpoints(workdir: str) -> tuple[list[int], list[int]]:
    """(committed steps, steps of orbax tmp folders) in the workdir."""
    try:
        names = os.listdir(Paths(workdir).checkpoints)
    except FileNotFoundError:
        return [], []
    done = sorted(int(n) for n in names if n.isdigit())
    tmp = sorted(int(n.split(".")[0]) for n in names if ".orbax-checkpoint-tmp" in n)
    return done, tmp


def observe(run: Run) -> str:
    """The run's stage now (see the module docstring)."""
    data = Paths(run.workdir).prepared
    if not os.path.exists(os.path.join(data, "meta.json")):
        return "prepare" if preparing(run, data) else "start-up"
    tmp = set(checkpoints(run.workdir)[1])
    run.tmp0 &= tmp  # once the start-up deleted them, a save of the same step is new
    tmp -= run.tmp0
    if tmp:
        return "final save" if max(tmp) == STEPS else "save"
    if not run.saw("train:"):
        return "start-up"
    logged = rows(run.workdir)
    start = run.resumed_step()
    if start == STEPS:  # a finished run rerun: its final eval only
        final = [r for r in logged if r["split"] == "eval" and r["step"] == STEPS]
        return "exit" if len(final) > run.final_rows0 else "final eval"
    if not [r for r in logged if r["split"] == "train" and r["step"] > start]:
        return "compile"
    last = logged[-1]
    if last["split"] == "eval":
        return "exit" if last["step"] == STEPS else "train"
    if last["step"] == STEPS:
        return "final eval"
    return "eval" if last["step"] % EVAL_EVERY == 0 else "train"


def preparing(run: Run, data: str) -> bool:
    """Whether the run is preparing `data`: it made the folder, wrote in it, or started
    workers (a folder left by a stopped prepare is not yet this run's)."""
    try:
        names = os.listdir(data)
    except FileNotFoundError:
        return False
    def written(name: str) -> bool:
        try:
            return os.path.getmtime(os.path.join(data, name)) >= run.wall0
        except FileNotFoundError:  # renamed meanwhile (meta.json.tmp)
            return True

    return not run.data0 or any(map(written, names)) or bool(runs.descendants(run.proc.pid))


def _sleep_while_running(run: Run, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if run.proc.poll() is not None:
            return False
        time.sleep(0.001)
    return True


def stop(workdir: str, args: list[str], env: dict[str, str], target: str, signame: str,
         delay: float, exit_limit: float = EXIT_LIMIT_S) -> dict[str, Any]:
    """Starts the run, waits for stage `target` (QUICK: the start), then `delay` seconds,
    signals it and waits for its end; returns what happened and what it broke."""
    run = Run(workdir, args, env)
    record: dict[str, Any] = dict(target=target, signal=signame, delay=round(delay, 3))
    reached = target == QUICK
    while not reached and run.proc.poll() is None:
        reached = observe(run) == target
        time.sleep(0.001)
    if not (reached and _sleep_while_running(run, delay)):
        run.proc.wait()
        run.wait_closed(HANG_S)
        return dict(record, stage="missed", rc=run.proc.returncode, problems=[],
                    last="\n".join(run.lines["stderr"][-1:]))
    stage, logged = observe(run), rows(workdir)
    family = runs.descendants(run.proc.pid)
    sent = time.monotonic()
    run.proc.send_signal(SIGNALS[signame])
    try:
        run.proc.wait(HANG_S)
        hung = False
    except subprocess.TimeoutExpired:
        run.proc.kill()
        run.proc.wait()
        hung = True
    exit_s = time.monotonic() - sent
    if run.proc.returncode == 0:  # it ended just before the signal
        stage = "missed"
    closed = run.wait_closed(HANG_S + 10)
    end = time.monotonic() + 5.0
    while runs.alive(family) and time.monotonic() < end:  # e.g. multiprocessing's tracker
        time.sleep(0.05)
    left = runs.alive(family)
    for pid in left:  # this harness's own leftovers
        os.kill(pid, signal.SIGKILL)
    said = [t for t, line in zip(run.stamps["stderr"], run.lines["stderr"])
            if RESUME_HINT in line]
    record.update(stage=stage, rc=run.proc.returncode, exit_s=round(exit_s, 2),
                  message_s=round(said[-1] - sent, 2) if said else None,
                  closed_s=None if closed is None else round(closed - (sent - run.start), 2),
                  last=run.lines["stderr"][-1] if run.lines["stderr"] else "")
    record["problems"] = expectations(record, run, logged, hung, left, exit_limit)
    return record


def expectations(record: dict[str, Any], run: Run, logged: list[dict], hung: bool,
                 left: list[int], exit_limit: float) -> list[str]:
    """What the stop broke of the module docstring's expectations."""
    problems = []
    if hung:
        problems.append(f"still running {HANG_S:.0f} s after the signal (killed)")
    if left:
        problems.append(f"{len(left)} process(es) of the run outlived it: {left}")
    if record["closed_s"] is None:
        problems.append("its stderr stayed open (a process holds it)")
    if any("Traceback" in line for line in run.lines["stderr"]):
        problems.append("a traceback on stderr")
    if record["signal"] == "KILL":
        if record["rc"] != -signal.SIGKILL:
            problems.append(f"exit {record['rc']}, not -9")
        return problems
    if record["rc"] != 128 + signal.SIGTERM:
        problems.append(f"exit {record['rc']}, not 143"
                        + (" (killed by the signal: no handler)" if record["rc"] == -15 else ""))
    if record["exit_s"] > exit_limit:
        problems.append(f"{record['exit_s']:.1f} s to exit (> {exit_limit:.0f} s)")
    if RESUME_HINT not in record["last"]:
        problems.append(f"no line saying how to resume (last line: {record['last'][:120]!r})")
    start = run.resumed_step()  # rows past it are this run's once its progress bar is up
    trained = max([r["step"] for r in logged if r["split"] == "train" and r["step"] > start
                   and run.saw("train:")], default=0)
    done, _ = checkpoints(run.workdir)
    if trained and max(done, default=0) < trained:
        problems.append(f"steps up to {trained} were logged but the newest checkpoint is "
                        f"{max(done, default=None)}: no checkpoint saved at the stop")
    return problems
