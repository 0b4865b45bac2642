"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere; the session
fixtures shared by several modules (registered here, so that each runs once a session)."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from tests.ckpt_helpers import reference, reference_run, setup  # noqa: E402, F401
