"""The persistent compilation cache: a second train.py process loads every program the
first one compiled (jax's cache-hit log), and writes none again."""

import os
import subprocess
import sys

from tests import ckpt_helpers as h


def test_second_run_reads_every_program_from_the_cache(setup, reference_run, tmp_path):
    """The first process is the reference run (its own empty cache, from its config)."""
    cache, entries = reference_run["cache"], reference_run["entries"]
    hits, writes = reference_run["use"]
    assert hits == 0 and writes == len(entries) > 5, entries  # train/eval steps, init, ...
    p = h.run(str(tmp_path / "run2"),
              setup["args"] + [f"--config.train.compilation_cache_dir={cache}"], None)
    assert h.cache_use(p.stderr) == (len(entries), 0)
    assert sorted(os.listdir(cache)) == entries


ENABLE_AND_JIT = """
import sys, jax, jax.numpy as jnp
from flax_bert.trainer import compile_cache
print(compile_cache.enable(sys.argv[1], sys.argv[2]))
jax.jit(lambda x: x * 2)(jnp.arange(3.0)).block_until_ready()
"""


def test_relative_cache_dir_is_in_the_workdir_and_empty_disables(tmp_path):
    def run(cache_dir, workdir, **env):
        env = {**{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"},
               **env}
        return subprocess.run([sys.executable, "-c", ENABLE_AND_JIT, cache_dir, str(workdir)],
                              cwd=h.ROOT, env=env, capture_output=True, text=True, timeout=120,
                              check=True).stdout.strip()

    assert run("jax_cache", tmp_path / "run") == str(tmp_path / "run" / "jax_cache")
    assert len(os.listdir(tmp_path / "run" / "jax_cache")) >= 2  # arange and the lambda
    assert run(str(tmp_path / "shared"), tmp_path / "run") == str(tmp_path / "shared")
    assert os.listdir(tmp_path / "shared")
    assert run("", tmp_path / "off") == "None"
    assert not os.path.exists(tmp_path / "off")
    # jax's own setting wins
    assert run("jax_cache", tmp_path / "env", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax")) \
        == str(tmp_path / "jax")
    assert not os.path.exists(tmp_path / "env")
