"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere; jax's
persistent compilation cache for this process; the session fixtures shared by several
modules (registered here, so that each runs once a session)."""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# A program compiled again in this process (the same train step in another run of a test,
# e.g. a resumed fine-tune) is loaded from disk instead: the same executable, the same
# numbers, only the compile time saved. Set before the first compile (jax reads it then).
# Subprocesses do not inherit it; the checkpoint tests' train.py runs are pointed at it
# (tests/ckpt_helpers.py), so that they and the runs in this process share programs.
_JAX_CACHE = tempfile.mkdtemp(prefix="flax_bert_tests_jax_cache_")
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

from tests.ckpt_helpers import reference, reference_run, setup  # noqa: E402, F401
