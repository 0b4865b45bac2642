"""benchmarks/data_prep.py runs on a tiny input and prints its figures, unpacked and packed
(no speed assertion)."""

import os
import re
import subprocess
import sys

from tests.data_fixtures import marker_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_benchmark_prints_throughput_memory_and_pipeline_rate(tmp_path):
    path = str(tmp_path / "c.txt")
    marker_corpus(path, num_docs=8, sentences=30)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.data_prep", "--input", path, "--vocab-size", "300",
         "--max-seq-length", "32", "--num-workers", "1", "--eval-fraction", "0.5",
         "--batch-size", "8", "--batches", "3", "--packing"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"prepare \(this, 1 workers\): [\d.]+ s, [\d.]+ MB/s, [\d.]+ MB/s per core, "
                     r"[\d.]+ MB per CPU-second .*peak RSS [\d.]+ GB \(tree\)", proc.stdout), proc.stdout
    assert re.search(r"prepare \(this, packed, 1 workers\): [\d.]+ s, .*[\d.]+ MB per "
                     r"CPU-second", proc.stdout), proc.stdout
    assert re.search(r"prepare MB per CPU-second, packed / unpacked: \d+\.\d\dx", proc.stdout)
    assert len(re.findall(r"train pipeline \(this, dynamic.*: \d+ examples/s", proc.stdout)) == 1
    assert re.search(r"train pipeline \(this, packed, dynamic .*: \d+ rows/s, \d+ pairs/s",
                     proc.stdout), proc.stdout
