"""The persistent compilation cache: a second train.py process loads every program the
first one compiled (jax's cache-hit log), and writes none again."""

import os
import subprocess
import sys

from tests.test_train_e2e import ROOT, TINY, corpus  # noqa: F401  (corpus: a fixture)

LOG_MODULES = "jax._src.compiler,jax._src.compilation_cache"  # jax's cache hit/write lines


def _train(workdir, corpus_path, cache_dir, prepared) -> tuple[int, int]:
    """(cache hits, cache writes) of one short train.py run."""
    env = {**{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"},
           "JAX_DEBUG_LOG_MODULES": LOG_MODULES}
    result = subprocess.run(
        [sys.executable, "train.py", f"--workdir={workdir}", *TINY,
         f"--config.data.input={corpus_path}", f"--config.data.prepared_dir={prepared}",
         "--config.train.phase1_fraction=0", "--config.train.steps=4",
         "--config.train.eval_every=0", "--config.train.eval_batches=1",
         f"--config.train.compilation_cache_dir={cache_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return (result.stderr.count("Persistent compilation cache hit"),
            result.stderr.count("to persistent compilation cache with key"))


def test_second_run_reads_every_program_from_the_cache(corpus, tmp_path):  # noqa: F811
    cache, prepared = tmp_path / "cache", tmp_path / "prepared"
    hits, writes = _train(tmp_path / "run1", corpus, cache, prepared)
    entries = sorted(os.listdir(cache))
    assert hits == 0 and writes == len(entries) > 5, entries  # train/eval steps, init, ...
    hits, writes = _train(tmp_path / "run2", corpus, cache, prepared)
    assert (hits, writes) == (len(entries), 0)
    assert sorted(os.listdir(cache)) == entries


ENABLE_AND_JIT = """
import sys, jax, jax.numpy as jnp
from flax_bert.training import compile_cache
print(compile_cache.enable(sys.argv[1], sys.argv[2]))
jax.jit(lambda x: x * 2)(jnp.arange(3.0)).block_until_ready()
"""


def test_relative_cache_dir_is_in_the_workdir_and_empty_disables(tmp_path):
    def run(cache_dir, workdir, **env):
        env = {**{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"},
               **env}
        return subprocess.run([sys.executable, "-c", ENABLE_AND_JIT, cache_dir, str(workdir)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
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
