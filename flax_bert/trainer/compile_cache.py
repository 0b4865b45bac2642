"""The persistent compilation cache: a rerun or a resume loads its compiled programs from
disk instead of compiling them again (jax's `jax_compilation_cache_dir`)."""

from __future__ import annotations

import os

import jax

# Cache every program the run compiles: jax's default (1 s) skips the small programs, and a
# tiny CPU run's programs all compile in under a second, but they add up before step 1.
MIN_COMPILE_SECS = 0.0


def enable(cache_dir: str, workdir: str) -> str | None:
    """Points jax's persistent compilation cache at `cache_dir` (a relative path is taken
    inside `workdir`; "" leaves the cache off) and returns the folder in use. A folder set
    for jax already (JAX_COMPILATION_CACHE_DIR) wins. Must run before the process's first
    jit: jax reads the setting once, at its first compile."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    if not cache_dir:
        return None
    path = os.path.join(os.path.abspath(workdir), os.path.expanduser(cache_dir))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    return path
