"""Helpers for the checkpoint / CLI tests: a tiny corpus, tiny train.py runs, comparisons.
Its session fixtures are registered in tests/conftest.py (once for the whole session)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import operator
import os
import shutil
import subprocess
from typing import Any

import jax
import numpy as np
import pytest

# What the harnesses in tools/ share with the tests (the tests use them as h.*).
from tools.corpora import write_corpus  # noqa: F401
from tools.runs import (STEPS, TINY, alive, command, descendants, restore_item,  # noqa: F401
                        tree_hash, xla_flags)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = ("tokens_per_sec", "steps_per_sec")
CACHE_LOG_MODULES = "jax._src.compiler,jax._src.compilation_cache"  # cache hit/write lines


def env(devices: int, cache_dir: str | None) -> dict[str, str]:
    """Subprocess env: `devices` CPU devices; a shared compilation cache (same programs,
    same numbers; it only saves compile time). With cache_dir None, jax's cache is left to
    the run's config.train.compilation_cache_dir and jax logs its cache hits and writes."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    e.update(XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu")
    if cache_dir is None:
        e.update(JAX_DEBUG_LOG_MODULES=CACHE_LOG_MODULES)
    else:
        e.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return e


def run(workdir: str, args: list[str], cache_dir: str | None, devices: int = 8,
        expect_rc: int | None = 0) -> subprocess.CompletedProcess:
    p = subprocess.run(command(workdir, args), cwd=ROOT, env=env(devices, cache_dir),
                       capture_output=True, text=True, timeout=300)
    if expect_rc is not None:
        assert p.returncode == expect_rc, p.stderr[-3000:]
    return p


def with_flags(config: Any, flags: list[str]) -> Any:
    """`config` with train.py-style `--config.section.field=value` flags applied in place
    (each value cast to the field's type), for runs in the test process."""
    for flag in flags:
        key, value = flag.removeprefix("--config.").split("=", 1)
        *path, field = key.split(".")
        section = functools.reduce(operator.getitem, path, config)
        old = section[field]
        section[field] = value == "True" if isinstance(old, bool) else type(old)(value)
    return config


def train_here(workdir: str, args: list[str]) -> tuple[str, str]:
    """What `train.py --workdir=workdir *args` runs, in this process (its 8 devices, the
    programs from the session's compilation cache: no start-up per run); returns what it
    printed (stdout, stderr)."""
    from configs import default
    from flax_bert.tasks import pretraining

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        pretraining.train_and_evaluate(with_flags(default.get_config(), args), workdir)
    return out.getvalue(), err.getvalue()


def cli_here(module: Any, argv: list[str], out: io.StringIO | None = None
             ) -> tuple[int, str]:
    """A CLI module's (train.py, finetune.py) `parse_flags` + `main` on `argv` in this
    process, with flags of its own (no process start-up); returns (exit code, stderr).
    What it prints to stdout goes to `out`, if given."""
    from absl import flags

    err = io.StringIO()
    flag_values = flags.FlagValues()
    with contextlib.redirect_stdout(out or io.StringIO()), contextlib.redirect_stderr(err):
        try:
            module.main(module.parse_flags(argv, flag_values=flag_values), flag_values)
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def cache_use(stderr: str) -> tuple[int, int]:
    """(cache hits, cache writes) in the stderr of a run with env(..., cache_dir=None)."""
    return (stderr.count("Persistent compilation cache hit"),
            stderr.count("to persistent compilation cache with key"))


def train_rows(workdir: str) -> dict[int, dict[str, float]]:
    """Per-step train metrics (timings dropped) from metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in rows if r["split"] == "train"}


def max_abs_diff(a: Any, b: Any) -> float:
    leaves = jax.tree.leaves(jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        if np.size(x) else 0.0, a, b))
    return max(leaves) if leaves else 0.0


def assert_bitwise(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def folder_bytes(path: str) -> int:
    """The size of the files under `path`."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="session")
def setup(tmp_path_factory) -> dict:
    """Corpus, prepared data (tokenizer trained once), compile cache, base args. The
    compile cache is this process's own (conftest.py): the train.py processes and the runs
    in this process share their programs."""
    from configs import default
    from flax_bert.data import pipeline, prepare
    from flax_bert.data.config import DataOptions

    root = tmp_path_factory.mktemp("ckpt")
    corpus = str(root / "corpus.txt")
    write_corpus(corpus)
    config = default.get_config()
    config.data.input = corpus
    config.data.vocab_size = 200
    config.data.max_seq_length = 32
    config.data.num_workers = 1  # no worker processes to start (the data is the same)
    prepared = str(root / "prepared")
    prepare.prepare(DataOptions.from_config(config.data), prepared)
    vocab = pipeline.load_meta(prepared)["vocab_size"]
    args = TINY + [f"--config.data.input={corpus}", f"--config.data.prepared_dir={prepared}",
                   f"--config.model.vocab_size={vocab}"]
    return {"root": root, "args": args, "cache": jax.config.jax_compilation_cache_dir,
            "vocab": vocab, "prepared": prepared}


@pytest.fixture(scope="session")
def reference_run(setup) -> dict:
    """An uninterrupted 12-step run on 8 devices (mesh data=2 x fsdp=4) with its own empty
    compilation cache, set the user's way (config.train.compilation_cache_dir); the cache
    is then copied into the shared one. Returns its workdir, cache folder, the cache's
    file names and (cache hits, cache writes) of the run."""
    workdir = str(setup["root"] / "reference")
    cache = str(setup["root"] / "reference_cache")
    p = run(workdir, setup["args"] + [f"--config.train.compilation_cache_dir={cache}"], None)
    shutil.copytree(cache, setup["cache"], dirs_exist_ok=True)
    return {"workdir": workdir, "cache": cache, "entries": sorted(os.listdir(cache)),
            "use": cache_use(p.stderr)}


@pytest.fixture(scope="session")
def reference(reference_run) -> str:
    """The reference run's workdir."""
    return reference_run["workdir"]
