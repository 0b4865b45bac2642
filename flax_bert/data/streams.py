"""The NumPy random streams of the data, in one table, and the epoch order built on them.

Every random draw of the data is `np.random.default_rng([seed, ..., stream, ...])` with a
stream id from this table, so no two uses share numbers. Two families, two seeds:
  prepare (seed data.prepare_seed, per shard: [seed, group, part, stream(, MASKS|PACKING)]):
    PAIRS (0) train pairs, EVAL_PAIRS (1) held-out pairs, MASKS (2) static masks,
    PACKING (3) which pair goes to which row and the rows' order (packing.pack)
  the input pipelines (seed config.seed: [seed, stream, index]):
    TRAIN_MASKS (1) dynamic masks of global batch k, TRAIN_ORDER (2) pretraining's epoch
    order, FINETUNE_ORDER (1) a fine-tune's epoch order (another pipeline, its own seed use)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

PAIRS, EVAL_PAIRS, MASKS, PACKING = 0, 1, 2, 3
TRAIN_MASKS, TRAIN_ORDER = 1, 2
FINETUNE_ORDER = 1


def permutation(seed: int, stream: int, epoch: int, n: int) -> np.ndarray:
    """[n] the order of epoch `epoch`: a fresh permutation per epoch."""
    return np.random.default_rng([seed, stream, epoch]).permutation(n)


def epoch_indices(positions: np.ndarray, n: int,
                  order: Callable[[int], np.ndarray]) -> np.ndarray:
    """[b] example indices of global stream positions [b] over epochs of n examples, where
    `order(epoch)` is that epoch's permutation [n]: position g reads order(g // n)[g % n]."""
    epoch, pos = positions // n, positions % n
    idx = np.empty(len(positions), np.int64)
    for e in np.unique(epoch):
        idx[epoch == e] = order(int(e))[pos[epoch == e]]
    return idx
