"""Packed vs unpacked pretraining: real (non-padding) tokens per second of the same model's
train step on the same corpus, in one run.

    python -m benchmarks.make_corpora --short-docs --output /tmp/corpora
    python -m benchmarks.packing --input '/tmp/corpora/short-docs/*.txt' --seq 128 512

For each --seq L the corpus is prepared twice with one vocab (trained first, not timed):
unpacked and packed (data.packing, data.max_pairs_per_row), each with data.max_seq_length
L and max_predictions_per_seq 20 per 128 tokens (BERT's 20 at 128, 80 at 512). The train
step is the trainer's (`trainer/step.jit_train_step` of --config's model, AdamW, steps_per_call
steps per call, dynamic masking from the pipeline), on one device, fed real batches of
--batch rows from each folder (put on the device before timing). Repeats alternate
unpacked and packed calls; the median seconds per step is taken of each. The step's work
does not depend on the tokens, so the real-token fraction and pairs per row are read from a
larger sample of the same stream (--sample-rows rows, the attention_mask and pair_weights
sums), and real tokens/s = rows per second x L x that fraction. Prints per L: the
real-token fraction, pairs per row, seconds per step and real tokens/s of each, and
`ratio packed/unpacked: X.XXx`.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import build_parts, load_config
from flax_bert.data import corpus, pipeline, prepare, vocab as vocab_lib
from flax_bert.data.config import DataOptions
from flax_bert.tasks.pretraining import PretrainingObjective
from flax_bert.trainer import feed, sharding, step as steps


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="corpus files or glob (sentence per line)")
    p.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    p.add_argument("--config", default="small", help="configs/<name>.py: the model")
    p.add_argument("--batch", type=int, nargs="+", default=[16, 4],
                   help="rows per step, one per --seq (or one for all)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--max-pairs-per-row", type=int, default=3)
    p.add_argument("--steps-per-call", type=int, default=4)
    p.add_argument("--calls", type=int, default=2, help="train calls per timed repeat")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each (median)")
    p.add_argument("--sample-rows", type=int, default=4096,
                   help="rows of each stream read for the real-token fraction")
    p.add_argument("--override", action="append", default=[],
                   help="config field=value, e.g. train.attention_impl=explicit")
    return p.parse_args()


def prepared_batches(opts: DataOptions, out: str, rows: int, count: int, sample_rows: int
                     ) -> tuple[list[dict[str, np.ndarray]], float, float]:
    """`count` train batches of `rows` rows from `opts`'s corpus prepared into `out`, and
    the real-token fraction and pairs per row of the stream's first `sample_rows` rows."""
    prepare.prepare(opts, out, progress=False)
    it = pipeline.make_train_iterator(out, opts, global_batch_size=rows, seed=0,
                                      process_index=0, process_count=1)
    batches = [next(it) for _ in range(max(count, math.ceil(sample_rows / rows)))]
    sample = len(batches) * rows
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    pairs = sum(float(b["pair_weights"].sum()) if "pair_weights" in b else rows
                for b in batches)
    return batches[:count], real / (sample * opts.max_seq_length), pairs / sample


def main() -> None:
    args = parse_args()
    files = corpus.expand_inputs(args.input)
    with tempfile.TemporaryDirectory() as tmp:
        sentences = lambda: (s for _, doc in corpus.iter_raw_documents(  # noqa: E731
            files, "auto", "text") for s in corpus.to_sentences(doc, "auto"))
        vocab = vocab_lib.train_vocab(sentences, args.vocab_size, True, tmp)
        for i, seq in enumerate(args.seq):
            rows = args.batch[min(i, len(args.batch) - 1)]
            config = load_config(args.config, args.override)
            config.model.vocab_size = args.vocab_size
            config.train.steps_per_call = args.steps_per_call
            preds = math.ceil(20 * seq / 128)
            base = DataOptions().replace(
                input=tuple(files), vocab=vocab, max_seq_length=seq,
                max_predictions_per_seq=preds, num_workers=1,
                max_pairs_per_row=args.max_pairs_per_row)
            count = args.calls * args.steps_per_call
            sides = {}
            for name, packed in (("unpacked", False), ("packed", True)):
                opts = base.replace(packing=packed)
                batches, fraction, pairs_per_row = prepared_batches(
                    opts, os.path.join(tmp, f"{name}-{seq}"), rows, count, args.sample_rows)
                parts = build_parts(config, seq)
                step = steps.jit_train_step(parts.mesh, parts.shardings,
                                            objective=PretrainingObjective(parts.model),
                                            tx=parts.tx, schedule=parts.schedule)
                spec = sharding.batch_sharding(parts.mesh, stacked=True)
                calls = [jax.device_put(feed.stack_batches(
                    batches[c * args.steps_per_call:(c + 1) * args.steps_per_call]), spec)
                    for c in range(args.calls)]
                sides[name] = dict(step=step, state=parts.state, calls=calls,
                                   fraction=fraction, pairs_per_row=pairs_per_row, times=[])
                run_calls(sides[name], jax.random.PRNGKey(1))  # compile and warm up
            for _ in range(args.repeats):  # alternating: both see the same machine
                for side in sides.values():
                    start = time.perf_counter()
                    run_calls(side, jax.random.PRNGKey(1))
                    side["times"].append(time.perf_counter() - start)
            print(f"config {args.config}, seq {seq}, {rows} rows a step, {args.steps_per_call} "
                  f"steps a call, {args.repeats} repeats of {count} steps, jax "
                  f"{jax.__version__} on {jax.devices()[0].platform}")
            rates = {}
            for name, side in sides.items():
                seconds = statistics.median(side["times"]) / count  # a step
                rates[name] = rows * seq * side["fraction"] / seconds
                print(f"  {name:8s}: real tokens {side['fraction']:.1%}, "
                      f"{side['pairs_per_row']:.2f} pairs a row, {seconds:.3f} s/step, "
                      f"{rates[name]:,.0f} real tokens/s")
            print(f"  ratio packed/unpacked: {rates['packed'] / rates['unpacked']:.2f}x")
            sys.stdout.flush()


def run_calls(side: dict, rng: jax.Array) -> None:
    """The side's train calls, in order, then waits for them."""
    for batches in side["calls"]:
        side["state"], _ = side["step"](side["state"], batches, rng)
    jax.block_until_ready(side["state"])


if __name__ == "__main__":
    main()
