"""What the train-step benchmark's GPU mode does that can run on a CPU: its arguments, and
(`python -m benchmarks.check_gpu_mode`) the FLOP count, the HF step (bf16 autocast, fused
AdamW) on the CPU and the trace parser. Both run as processes: the tests import nothing
from benchmarks/."""

import os
import subprocess
import sys

from tests import ckpt_helpers as h
from tests.e2e.test_benchmarks import ROOT

SCRIPT = ["-m", "benchmarks.train_step"]
CHECKS = ("model_flops_are_six_per_matmul_parameter_and_token_plus_attention",
          "hf_step_under_bf16_autocast_and_fused_adamw_trains_like_float32",
          "top_ops_of_a_real_cpu_trace", "top_ops_of_a_gpu_trace_count_device_kernels_only")


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return subprocess.run([sys.executable, *SCRIPT, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_gpu_only_flags_and_a_missing_gpu_are_one_error_line():
    out = _script("--platform", "cpu", "--hf-compile")
    assert out.returncode == 2 and "--hf-compile and --peak-tflops are for --platform gpu" \
        in out.stderr, out.stderr
    out = _script("--platform", "gpu", "--config", "tiny", "--seq", "16", "--batch", "2")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("error: no gpu device for jax") and out.stderr.count("\n") == 1
    out = subprocess.run([sys.executable, *SCRIPT, "--platform", "gpu"], cwd=ROOT, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                         text=True)
    assert out.returncode == 2 and out.stderr == (
        "error: --platform gpu but jax runs on cpu (JAX_PLATFORMS=cpu)\n"), out.stderr


def test_flops_hf_bf16_step_and_trace_parser_checks_pass():
    env = dict(os.environ, XLA_FLAGS=h.xla_flags(1), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "benchmarks.check_gpu_mode"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.split() == [w for name in CHECKS for w in ("ok", name)], out.stdout
