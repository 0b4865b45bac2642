"""Preemption chaos: a tiny `train.py` run that prepares its data, stopped again and again
at seeded random moments with SIGKILL or SIGTERM (drawn at random), rerun with the same
command after each stop, and compared at the end with one uninterrupted run.

    python -m tools.chaos --stops 30 --seed 0 [--signal random|KILL|TERM] [--root DIR]
        [--jax-cache workdir|DIR] [--grain-workers N]

The run: 12 steps of a 1-layer model (tools/runs.py's TINY), data prepared in the
workdir by 2 worker processes, a metrics row every step, an eval of the whole held-out
split after steps 4 and 8, checkpoints at 5 and 10 and the final one at 12. The stops come
in episodes (a fresh workdir each, up to 7 stops, then a rerun to the end): one stop per
stage in the order the run meets them (prepare, compile, 1-3 of train / save / eval, one
of final eval / final save / exit), and one "quick" stop, a second signal 0-1.5 s after
the previous stop's rerun started. A stop waits for its stage, then a seeded delay within
the stage's usual length, then signals; the stage recorded is the one seen at the signal:

  start-up    before prepare (or, data ready, before the progress bar)
  prepare     prepared/ without meta.json, made or written by this run or with its workers
              (vocab training, then the workers' shards)
  compile     the progress bar is up, no step of this process logged yet
  train       between steps
  save        an orbax `<step>.orbax-checkpoint-tmp-*` folder exists (an async commit)
  eval        the row of an eval step is written, its eval row not yet
  final eval  the last step's row is written, the final eval row not yet
  final save  the final step's tmp folder exists
  exit        the final eval row is written; plots, shutdown

What the run must meet, per stop: SIGKILL ends it (-9); SIGTERM ends it within 10 s with
exit 143 and a last line saying how to resume (`rerun the same command`), and no step it
logged is lost (the newest checkpoint is at its last logged step); no process of the run
outlives it and its stderr is closed; no traceback. Per episode, after a rerun to the end
(exit 0) and one more rerun of the finished run: the final checkpoint's params, opt_state
and train items bitwise equal to the uninterrupted run's, its data item and the prepared
files equal, and metrics.jsonl's rows (timing keys dropped) none missing, none doubled,
none different; the rerun of the finished run says that it is finished and changes no file
(run.lock names its last holder); every jax compilation cache entry readable (a kill can
cut one short).
Every unmet expectation is printed as a failure (stage, stop, what).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from flax_bert.trainer.run_folder import LOCK_FILE, Paths
from tools import runs
from tools.corpora import write_corpus
from tools.chaos_stop import (
    EVAL_EVERY, EXIT_LIMIT_S, HANG_S, QUICK, RESUME_HINT, SIGNALS, STEPS, Run, checkpoints,
    rows, stop)

SAVE_EVERY = 5  # the chaos run's checkpoint period
TIMING_KEYS = ("tokens_per_sec", "steps_per_sec", "eval_seconds", "save_seconds")
FINISHED_HINT = f"has finished its {STEPS} steps"  # a rerun of the finished run says so
MIDDLE = ("train", "save", "eval")
FINAL = ("final eval", "final save", "exit")
# Seconds a stop may wait once its stage is seen (a seeded uniform draw), about the
# stage's length on a 2-core CPU; 0: at once (a save's commit lasts milliseconds).
WINDOW = {"prepare": 0.2, "compile": 0.5, "train": 0.2, "save": 0.0, "eval": 0.1,
          "final eval": 0.1, "final save": 0.0, "exit": 0.2, QUICK: 1.5}
STAGES = ("start-up", "prepare", "compile", *MIDDLE, *FINAL, "missed")  # the tables' order


def run_args(corpus: str, grain_workers: int = 0) -> list[str]:
    """train.py flags of the chaos run (no prepared_dir: prepare is a stage of it), its
    batches made in `grain_workers` worker processes (0: in the main process; the same
    batches). The compiled programs are TINY's (the same shapes and steps)."""
    return runs.TINY + [
        f"--config.data.input={corpus}", "--config.data.num_workers=2",
        f"--config.data.worker_count={grain_workers}",
        f"--config.train.eval_every={EVAL_EVERY}", "--config.train.eval_batches=0",
        f"--config.checkpoint.every={SAVE_EVERY}"]


def run_env(jax_cache: str | None) -> dict[str, str]:
    """8 CPU devices (and this process's other XLA flags); jax's compilation cache in
    `jax_cache` (None: the run's own, config.train.compilation_cache_dir in its workdir)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(XLA_FLAGS=runs.xla_flags(8), JAX_PLATFORMS="cpu")
    if jax_cache:
        env.update(JAX_COMPILATION_CACHE_DIR=jax_cache,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def plan(rng: random.Random, stops: int) -> list[list[str]]:
    """Targets of each episode, in the order a run meets them; one QUICK per episode."""
    episodes = []
    while stops > 0:
        targets = ["prepare", "compile"] + sorted(
            rng.sample(MIDDLE, rng.randint(1, 3)), key=MIDDLE.index) + [rng.choice(FINAL)]
        targets.insert(rng.randint(1, len(targets)), QUICK)
        episodes.append(targets[:stops])
        stops -= len(targets)
    return episodes


def comparable(row: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in row.items() if k not in TIMING_KEYS}, sort_keys=True)


def compare(workdir: str, reference: str) -> list[str]:
    """What differs between a finished chaos workdir and the uninterrupted one."""
    import jax
    import numpy as np

    problems = []
    done, tmp = checkpoints(workdir)
    if STEPS not in done:
        return [f"no checkpoint at step {STEPS} (checkpoints {done}, tmp {tmp})"]
    for item in ("params", "opt_state", "train"):
        a, b = (runs.restore_item(w, STEPS, item) for w in (workdir, reference))
        leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
        if (jax.tree.structure(a) != jax.tree.structure(b)
                or any(not np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))):
            problems.append(f"checkpoint {STEPS} item {item} differs from the uninterrupted run's")
    for folder in (lambda p: os.path.join(p.checkpoints, str(STEPS), "data"),
                   lambda p: p.prepared):
        hashes = [{name: digest for name, digest in runs.tree_hash(folder(Paths(w))).items()
                   if name != "commit_success.txt"}  # it names its folder
                  for w in (workdir, reference)]
        if hashes[0] != hashes[1]:
            problems.append(f"{os.path.relpath(folder(Paths(workdir)), workdir)} differs from "
                            f"the uninterrupted run's")
    got = collections.Counter(comparable(r) for r in rows(workdir))
    want = collections.Counter(comparable(r) for r in rows(reference))
    for row, n in sorted((want - got).items()):
        problems.append(f"metrics row missing or different ({n}x): {row[:160]}")
    for row, n in sorted((got - want).items()):
        kind = "doubled" if row in want else "not in the uninterrupted run"
        problems.append(f"metrics row {kind} ({n}x): {row[:160]}")
    if os.path.isdir(Paths(workdir).broken_checkpoints):
        problems.append(f"checkpoints moved aside as broken: "
                        f"{sorted(os.listdir(Paths(workdir).broken_checkpoints))}")
    return problems


def rerun(workdir: str, args: list[str], env: dict[str, str], what: str, says: str = ""
          ) -> list[str]:
    """Runs the command to its end; what went wrong (`says`: a phrase its stdout must hold)."""
    run = Run(workdir, args, env)
    run.proc.wait()
    run.wait_closed(HANG_S)
    if run.proc.returncode != 0:
        return [f"{what}: exit {run.proc.returncode}: "
                f"{' | '.join(run.lines['stderr'][-3:])[:400]}"]
    if any("Traceback" in line for line in run.lines["stderr"]):
        return [f"{what}: a traceback on stderr"]
    if says and not run.saw(says, "stdout"):
        return [f"{what}: no line saying {says!r}"]
    return []


def broken_cache_entries(folder: str) -> list[str]:
    """jax compilation cache entries in `folder` that do not decompress: cut short by a
    kill (jax writes an entry in place and never rewrites one, so every later run fails
    to read it, silently, and compiles that program again)."""
    from jax._src import compilation_cache

    broken = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith("-cache"):
            with open(os.path.join(folder, name), "rb") as f:
                try:
                    compilation_cache.decompress_executable(f.read())
                except Exception:  # noqa: BLE001  (zstd's or zlib's error)
                    broken.append(name)
    return broken


def episode(workdir: str, steps: list[tuple[str, str, float]], args: list[str],
            env: dict[str, str], check: Callable[[str], list[str]], log=print,
            exit_limit: float = EXIT_LIMIT_S) -> dict[str, Any]:
    """Stops (target stage, signal name, delay) of one workdir, a rerun to the end, then
    a rerun of the finished run. Returns the stops and what went wrong: after the rerun
    to the end ("resumed": `check(workdir)`, e.g. `compare` with the uninterrupted run)
    and after the rerun of the finished run ("finished": it must change nothing)."""
    stops = []
    for target, signame, delay in steps:
        stops.append(stop(workdir, args, env, target, signame, delay, exit_limit))
        log(format_stop(stops[-1]))
    resumed = rerun(workdir, args, env, "rerun to the end") + check(workdir)
    before = runs.tree_hash(workdir)
    finished = rerun(workdir, args, env, "rerun of the finished run", says=FINISHED_HINT)
    after = runs.tree_hash(workdir)
    finished += [f"the rerun of the finished run changed {name}" for name in sorted(
        set(before) | set(after)) if before.get(name) != after.get(name) and name != LOCK_FILE]
    finished += [f"after a rerun of the finished run: {p}" for p in check(workdir)
                 if p not in resumed]
    cache = env.get("JAX_COMPILATION_CACHE_DIR") or Paths(workdir).under("jax_cache")
    resumed += [f"jax compilation cache entry {name} is broken (a kill cut its write short): "
                f"every run compiles it again" for name in broken_cache_entries(cache)]
    return {"stops": stops, "resumed": resumed, "finished": finished}


def chaos(root: str, args: list[str], stops: int, seed: int, env: dict[str, str],
          reference: str, signals: tuple[str, ...] = tuple(SIGNALS), log=print
          ) -> dict[str, Any]:
    """Episodes of stops (see `plan`; a signal of `signals` and a delay drawn for each)
    of train.py `args` in fresh workdirs under `root`, each compared with `reference` (an
    uninterrupted run of `args`)."""
    rng = random.Random(seed)
    records, episodes = [], []
    for e, targets in enumerate(plan(rng, stops)):
        steps = [(t, rng.choice(sorted(signals)), rng.uniform(0, WINDOW[t])) for t in targets]
        result = episode(os.path.join(root, f"episode{e}"), steps, args, env,
                         lambda w: compare(w, reference), lambda line: log(f"  episode {e}{line}"))
        records += [dict(r, episode=e) for r in result["stops"]]
        episodes.append(dict(episode=e, problems=result["resumed"] + result["finished"]))
        log(f"episode {e}: " + ("; ".join(episodes[-1]["problems"]) or
                                "bitwise equal, rows equal, a rerun changes nothing"))
    return {"stops": records, "episodes": episodes}


def format_stop(r: dict[str, Any]) -> str:
    exit_s = "" if r["stage"] == "missed" else f"{r['exit_s']:6.2f} s"
    return (f" {r['target']:>10} -> {r['stage']:<10} "
            f"SIG{r['signal']:<4} delay {r['delay']:.3f}  exit {str(r['rc']):>4} {exit_s:>9}  "
            + ("; ".join(r["problems"]) or "ok"))


def tables(result: dict[str, Any]) -> str:
    """Stops by stage and signal; SIGTERM -> exit seconds per stage; every failure."""
    stops = result["stops"]
    stages = sorted({r["stage"] for r in stops},
                    key=lambda s: STAGES.index(s) if s in STAGES else len(STAGES))
    out = ["stops by stage and signal (failed: stops with an unmet expectation)",
           f"  {'stage':<12}{'SIGKILL':>9}{'SIGTERM':>9}{'failed':>8}"]
    for stage in stages:
        mine = [r for r in stops if r["stage"] == stage]
        count = lambda s: sum(r["signal"] == s for r in mine)  # noqa: E731
        out.append(f"  {stage:<12}{count('KILL'):>9}{count('TERM'):>9}"
                   f"{sum(bool(r['problems']) for r in mine):>8}")
    out += ["SIGTERM -> exit, per stage: seconds (min / median / max), exit codes, resume line "
            "(and the largest seconds from the signal to that line)",
            f"  {'stage':<12}{'n':>3}{'min':>7}{'median':>8}{'max':>7}  codes      resume line"]
    for stage in stages:
        mine = [r for r in stops if r["stage"] == stage and r["signal"] == "TERM"]
        if stage == "missed" or not mine:
            continue
        secs = [r["exit_s"] for r in mine]
        codes = ",".join(sorted({str(r["rc"]) for r in mine}))
        hint = sum(RESUME_HINT in r["last"] for r in mine)
        said = [r["message_s"] for r in mine if r.get("message_s") is not None]
        out.append(f"  {stage:<12}{len(mine):>3}{min(secs):>7.2f}{statistics.median(secs):>8.2f}"
                   f"{max(secs):>7.2f}  {codes:<10} {hint}/{len(mine)}"
                   + (f" (at {max(said):.2f} s)" if said else ""))
    failures = [f"  stop {i} (episode {r['episode']}, {r['stage']}, SIG{r['signal']}): {p}"
                for i, r in enumerate(stops) for p in r["problems"]]
    failures += [f"  episode {e['episode']}: {p}" for e in result["episodes"]
                 for p in e["problems"]]
    out += [f"failures: {len(failures)}"] + failures
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stops", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="", help="folder for the workdirs (default: a temp dir)")
    p.add_argument("--signal", choices=("random", *SIGNALS), default="random",
                   help="KILL or TERM for every stop (TERM: each stage's SIGTERM -> exit)")
    p.add_argument("--jax-cache", default="workdir",
                   help="'workdir': each run's own cache (the config's default: a real first "
                        "compile per episode); or a folder shared by every run")
    p.add_argument("--grain-workers", type=int, default=0,
                   help="config.data.worker_count: grain worker processes (they must end "
                        "with the run, however it ends)")
    a = p.parse_args()
    # The comparison restores checkpoints of 8 devices (before jax's backend starts).
    os.environ.update(XLA_FLAGS=runs.xla_flags(8), JAX_PLATFORMS="cpu")
    root = a.root or tempfile.mkdtemp(prefix="chaos_")
    os.makedirs(root, exist_ok=True)
    corpus = os.path.join(root, "corpus.txt")
    write_corpus(corpus)
    env = run_env(None if a.jax_cache == "workdir" else os.path.abspath(a.jax_cache))
    reference = os.path.join(root, "reference")
    shutil.rmtree(reference, ignore_errors=True)
    start = time.monotonic()
    args = run_args(corpus, a.grain_workers)
    p = subprocess.run(runs.command(reference, args), cwd=runs.ROOT, env=env,
                       capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"the uninterrupted run failed: {p.stderr[-2000:]}")
    print(f"uninterrupted run: {time.monotonic() - start:.1f} s ({root})")
    signals = tuple(SIGNALS) if a.signal == "random" else (a.signal,)
    result = chaos(root, args, a.stops, a.seed, env, reference, signals)
    print(tables(result))
    with open(os.path.join(root, "chaos.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
