"""Data speed and memory: prepare's MB of text per second per core and peak RSS, and the
train pipeline's examples/s from the prepared shards; unpacked, and packed with --packing.

    python -m benchmarks.make_corpora --mb 20 200 --output /tmp/corpora
    python -m benchmarks.data_prep --input '/tmp/corpora/20mb/*.txt' '/tmp/corpora/200mb/*.txt' \
        [--baseline /tmp/main-checkout]
    python -m benchmarks.make_corpora --short-docs --output /tmp/corpora
    python -m benchmarks.data_prep --input '/tmp/corpora/short-docs/*.txt' \
        --max-seq-length 512 --packing --num-workers 1

With --packing every prepare of this code runs twice, packing off then on (data.packing,
max_pairs_per_row 3), one after the other in the same run, and prints the ratio of their
MB per CPU-second; the packed folder's pipeline rate is in rows/s and pairs/s.

Each prepare runs as `python -m flax_bert.data.prepare` in a fresh process with all cores
(--num-workers, 0 = all) and a vocab trained first on the bundled corpus (given to every
run, so vocab training is not timed). Peak RSS is sampled every --sample-s seconds over the
whole process tree (the prepare process and its workers: "tree" = sum, "largest" = the
biggest one). MB/s per core = text MB / wall seconds / workers; MB per CPU-second = text
MB / (user + system seconds of the prepare process and its workers), which a machine
shared with other jobs disturbs less. With --baseline DIR the same
runs use the flax_bert code of DIR (e.g. a checkout of main) too, in the same process, one
after the other, so both see the same machine. Then the train pipeline's examples/s
(dynamic masking, and whole-word masking) at --batch-size from each prepared folder.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import psutil

from configs.default import BUNDLED_CORPUS
from flax_bert.data import corpus, vocab as vocab_lib
from flax_bert.data.config import DataOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MB = 1 << 20
# Timed in a child process that imports flax_bert from the code tree under test.
PIPELINE_TIMER = """
import json, sys, time
from flax_bert.data import pipeline
from flax_bert.data.config import DataOptions
out, batch, batches, wwm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
meta = pipeline.load_meta(out)
packed = dict(packing=True, max_pairs_per_row=meta["max_pairs_per_row"]) if meta.get(
    "packed") else {}
opts = DataOptions().replace(
    max_predictions_per_seq=meta["max_predictions_per_seq"],
    whole_word_masking=wwm, dynamic_masking=True, prefetch=0, **packed)
it = pipeline.make_train_iterator(out, opts, global_batch_size=batch, seed=0, process_index=0,
                                  process_count=1)
next(it)
pairs, t0 = 0, time.perf_counter()
for _ in range(batches):
    b = next(it)
    pairs += float(b["pair_weights"].sum()) if "pair_weights" in b else len(b["input_ids"])
seconds = time.perf_counter() - t0
print(json.dumps([batches * batch / seconds, pairs / seconds]))
"""


def run_measured(cmd: list[str], code: str, sample_s: float
                 ) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, peak tree RSS, peak largest-process RSS) of a command
    run on `code`. CPU seconds: user + system of the process and its workers."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env_for(code), cwd=code, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    root, tree_peak, one_peak = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            rss = [p.memory_info().rss for p in [root] + root.children(recursive=True)]
        except psutil.Error:  # a process ended while sampled
            continue
        tree_peak, one_peak = max(tree_peak, sum(rss)), max(one_peak, max(rss))
        time.sleep(sample_s)
    out, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return time.perf_counter() - t0, _children_cpu() - cpu0, tree_peak, one_peak


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def env_for(code: str) -> dict:
    """Imports flax_bert from `code` (run with cwd=code too: the cwd comes first)."""
    return {**os.environ, "PYTHONPATH": code}


def main() -> None:
    d = DataOptions()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", nargs="+", default=[BUNDLED_CORPUS], help="one glob per corpus")
    p.add_argument("--baseline", default="", help="a folder with other flax_bert code")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--max-seq-length", type=int, default=d.max_seq_length)
    p.add_argument("--eval-fraction", type=float, default=d.eval_fraction)
    p.add_argument("--num-workers", type=int, default=0, help="prepare workers (0 = all cores)")
    p.add_argument("--batch-size", type=int, default=32, help="train pipeline global batch")
    p.add_argument("--batches", type=int, default=300, help="train batches timed")
    p.add_argument("--whole-word", action="store_true", help="time whole-word masking too")
    p.add_argument("--sample-s", type=float, default=0.05, help="RSS sampling period")
    p.add_argument("--packing", action="store_true",
                   help="also prepare (and feed) each corpus packed, right after unpacked")
    args = p.parse_args()
    workers = args.num_workers or os.cpu_count() or 1
    codes = [("this", ROOT)] + ([("baseline", os.path.abspath(args.baseline))]
                                if args.baseline else [])
    with tempfile.TemporaryDirectory() as tmp:
        bundled = corpus.expand_inputs(BUNDLED_CORPUS)
        sentences = lambda: (s for _, doc in corpus.iter_raw_documents(  # noqa: E731
            bundled, "auto", "text") for s in corpus.to_sentences(doc, "auto"))
        vocab = vocab_lib.train_vocab(sentences, args.vocab_size, True, tmp)
        for pattern in args.input:
            files = [os.path.abspath(f) for f in
                     sorted(glob.glob(pattern)) or corpus.expand_inputs(pattern)]
            text_mb = sum(len(s) + 1 for f in files for _, doc in
                          corpus.iter_raw_documents([f], "auto", "text") for s in doc) / MB
            print(f"corpus {pattern}: {len(files)} files, {text_mb:.1f} MB of text")
            per_cpu = {}
            for name, code in codes:
                for packed in (False, True) if args.packing and name == "this" else (False,):
                    label = f"{name}, packed" if packed else name
                    out = os.path.join(tmp, f"{name}-{len(os.listdir(tmp))}")
                    cmd = [sys.executable, "-m", "flax_bert.data.prepare", "--input", *files,
                           "--output", out, "--vocab", vocab, "--num-workers", str(workers),
                           "--max-seq-length", str(args.max_seq_length), "--eval-fraction",
                           str(args.eval_fraction)] + (["--packing"] if packed else [])
                    wall, cpu, tree, one = run_measured(cmd, code, args.sample_s)
                    per_cpu[label] = text_mb / cpu
                    print(f"  prepare ({label}, {workers} workers): {wall:.1f} s, "
                          f"{text_mb / wall:.2f} MB/s, {text_mb / wall / workers:.2f} MB/s per "
                          f"core, {text_mb / cpu:.2f} MB per CPU-second ({cpu:.0f} CPU-s), "
                          f"peak RSS {tree / 1e9:.2f} GB (tree), {one / 1e9:.2f} GB (largest)")
                    time_pipeline(out, code, label, args)
            if "this, packed" in per_cpu:
                print(f"  prepare MB per CPU-second, packed / unpacked: "
                      f"{per_cpu['this, packed'] / per_cpu['this']:.2f}x")


def time_pipeline(out: str, code: str, label: str, args: argparse.Namespace) -> None:
    """Print the train pipeline's rate from a prepared folder (rows and pairs when packed)."""
    for wwm in ("0", "1") if args.whole_word else ("0",):
        rows, pairs = json.loads(subprocess.run(
            [sys.executable, "-c", PIPELINE_TIMER, out, str(args.batch_size),
             str(args.batches), wwm], env=env_for(code), cwd=code, check=True,
            capture_output=True, text=True).stdout)
        kind = "whole-word" if wwm == "1" else "dynamic"
        rate = (f"{rows:.0f} rows/s, {pairs:.0f} pairs/s" if "packed" in label
                else f"{rows:.0f} examples/s")
        print(f"  train pipeline ({label}, {kind} masking, batch {args.batch_size}): {rate}")

if __name__ == "__main__":
    main()
