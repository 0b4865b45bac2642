"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere; jax's
persistent compilation cache for this process; the session fixtures shared by several
modules (registered here, so that each runs once a session); the groups that keep a
module's tests, and the modules that share a session fixture, in one pytest-xdist worker
(pyproject.toml runs the suite on the machine's cores, `--dist loadgroup`)."""
import atexit
import os
import shutil
import tempfile

import pytest

# Once, also in the xdist workers (they inherit it): XLA_FLAGS is part of jax's cache key,
# so the tests' programs and those of the processes they start (tests/ckpt_helpers
# .xla_flags: the same flags, another device count where a test asks) are one cache entry
# each. XLA:CPU's cheapest code generation (LLVM at -O0, no expensive passes): the same
# programs, compiled ~40% cheaper, and compiles are most of the suite's time; speed is
# measured in benchmarks/, not here.
_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
          "--xla_llvm_disable_expensive_passes=true")
_current = os.environ.get("XLA_FLAGS", "").split()
os.environ["XLA_FLAGS"] = " ".join(_current + [f for f in _FLAGS if f not in _current])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keys that do not depend on the cache's folder: by default jax points XLA's GPU autotuning
# cache into it, and that path is part of every key, so the reference run's programs (its own
# cache, copied into the session's) would never be hits. Moot on the CPU; inherited by every
# process the tests start.
os.environ["JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES"] = "none"

import jax  # noqa: E402

# A program compiled again in this session (the same train step in another test, on
# another xdist worker, or a resumed fine-tune) is loaded from disk instead: the same
# executable, the same numbers, only the compile time saved. Set before the first compile
# (jax reads it then). The process that starts the session makes the folder and removes it
# at its exit; the xdist workers it starts inherit it through the environment (an entry
# read while another worker writes it is only a cache miss: jax warns and compiles). The
# checkpoint tests' train.py runs are pointed at it too (tests/ckpt_helpers.py).
_CACHE_ENV = "FLAX_BERT_TESTS_JAX_CACHE"
if _CACHE_ENV not in os.environ:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="flax_bert_tests_jax_cache_")
    atexit.register(shutil.rmtree, os.environ[_CACHE_ENV], ignore_errors=True)
_JAX_CACHE = os.environ[_CACHE_ENV]
jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

from tests.ckpt_helpers import reference, reference_run, setup  # noqa: E402, F401


# Modules whose tests share a session fixture or cache: one xdist worker runs them all.
SHARED_WORKER = {
    "test_checkpoint": "reference", "test_cli_errors": "reference",  # the reference run
    "test_compile_cache": "reference", "test_workdir": "reference",
    "test_packing_runs": "reference",
    "test_train_step": "data_parallel", "test_multihost": "data_parallel",  # its 8-device run
    "test_train_feed": "data_parallel",  # and its program
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each module's tests go to one worker (module fixtures run once); modules in
    SHARED_WORKER share theirs."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        item.add_marker(pytest.mark.xdist_group(SHARED_WORKER.get(module, module)))
