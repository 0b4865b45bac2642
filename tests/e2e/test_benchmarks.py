"""The benchmarks run (on a tiny config, in seconds) and print their result lines. Speed
itself is measured by the benchmarks, never here."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from tests import ckpt_helpers as h

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(module: str, *args: str) -> str:
    """`python -m benchmarks.MODULE ARGS` from the repo root (as benchmarks/README.md)."""
    env = dict(os.environ, XLA_FLAGS=h.xla_flags(1))  # one device, no 8-way
    out = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_train_step_benchmark_prints_ratio():
    out = _run("train_step", "--config", "tiny", "--seq", "16", "--batch", "2",
               "--steps", "1", "--repeats", "1", "--warmup", "1", "--matmul-size", "64",
               "--breakdown")
    assert re.search(r"^ratio ours/hf: \d+\.\d\dx$", out, re.M), out
    for part in ("forward", r"forward\+backward", "optimizer", "backward"):
        assert re.search(rf"^  part {part} +\d+\.\d+ s = +\d+% of the step", out, re.M), out
    assert re.search(r"of matmul peak", out), out


def test_memory_benchmark_prints_both_policies():
    out = _run("memory", "--config", "tiny", "--seq", "16", "--batch", "2",
               "--policies", "none,nothing_saveable")
    assert re.search(r"remat\s+none: peak", out), out
    assert re.search(r"remat\s+nothing_saveable: peak .*\(diff", out), out


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed: nothing compiles for a TPU")
def test_aot_table_ranks_meshes_and_prints_a_row(tmp_path):
    out = _run("aot_table", "--sizes", "tiny", "--seqs", "128", "--topologies", "v5e:2x2",
               "--max-rows", "2", "--json", str(tmp_path / "t.json"))
    assert re.search(r"^\| tiny \| 128 \| v5litepod-4 \| .+ \| 2 \| \w+ \| \d+\.\d\d of 16 GiB "
                     r"\| 1\.0\d \| \d+% \| (compute|hbm|ici) \|", out, re.M), out
    (row,) = json.loads((tmp_path / "t.json").read_text())
    ranked = [c["tokens_per_s"] for c in row["candidates"]]
    assert len(ranked) == 4 and ranked == sorted(ranked, reverse=True)
    assert row["roofline"]["tokens_per_s"] == ranked[0] and row["memory"]["fits"]
