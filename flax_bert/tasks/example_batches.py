"""A fine-tuning job's batches: arrays of examples (rows along the first axis; labelled
text, GLUE, SQuAD windows) -> endless shuffled train batches and ordered eval batches of
this process's rows, and the eval step's outputs back in example order."""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Iterable

import grain
import jax
import numpy as np

from flax_bert.data import streams


def num_rows(arrays: dict[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values())))


class TrainBatches:
    """Train batch k: rows k*B ... k*B + B - 1 of an endless stream of epochs, each a
    fresh permutation seeded by (seed, epoch); this process's share of them."""

    def __init__(self, arrays: dict[str, np.ndarray], global_batch_size: int, seed: int,
                 process_index: int, process_count: int):
        self.arrays, self.seed, self.global_batch = arrays, seed, global_batch_size
        self.n = num_rows(arrays)
        self.b = global_batch_size // process_count
        self.offset = process_index * self.b

    def __call__(self, k: int, _: Any = None) -> dict[str, np.ndarray]:
        g = k * self.global_batch + self.offset + np.arange(self.b)  # [b] stream positions
        idx = streams.epoch_indices(g, self.n, lambda epoch: streams.permutation(
            self.seed, streams.FINETUNE_ORDER, epoch, self.n))
        return {k: v[idx] for k, v in self.arrays.items()}


def make_train_iterator(arrays: dict[str, np.ndarray], global_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1
                        ) -> grain.DatasetIterator:
    """Endless shuffled batches; a grain iterator (get_state / set_state for checkpoints).
    The batch divides by the processes (trainer/checks.check_batch)."""
    batches = TrainBatches(arrays, global_batch_size, seed, process_index, process_count)
    ds = grain.MapDataset.range(sys.maxsize).map_with_index(batches)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def eval_batches(arrays: dict[str, np.ndarray], global_batch_size: int,
                 process_index: int = 0, process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """All examples in order, this process's share of each batch; the last batch is padded
    with rows of example_weight 0."""
    n, b = num_rows(arrays), global_batch_size // process_count
    out = []
    for k in range(math.ceil(n / global_batch_size)):
        g = k * global_batch_size + process_index * b + np.arange(b)  # [b]
        valid = g < n
        batch = {key: value[np.where(valid, g, 0)] for key, value in arrays.items()}
        batch["example_weight"] = valid.astype(np.float32)
        out.append(batch)
    return out


def gather(eval_on: Callable[[dict], Any], batches: Iterable[dict[str, np.ndarray]],
           n: int) -> dict[str, np.ndarray]:
    """The eval step's per-example outputs over `eval_batches`' batches of n examples, in
    example order ([n, ...] each; the padding rows dropped). `eval_on` returns the whole
    global batch's outputs to every process."""
    outputs = [jax.device_get(eval_on(local)) for local in batches]
    return {key: np.concatenate([o[key] for o in outputs])[:n] for key in outputs[0]}
