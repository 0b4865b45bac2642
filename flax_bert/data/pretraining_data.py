"""The front door of the data: what a pretraining run reads, prepared on first use, as one
value.

A job asks once, `pretraining_data(options, folder, ...)`: process 0 prepares what is
missing (the main folder, then phase 1's beside it with the main folder's vocab), every
process waits for it, and the value hands out the train iterator and the held-out batches.
Jobs use nothing else of flax_bert.data's preparation.
"""

from __future__ import annotations

import dataclasses
import os

import grain

from flax_bert import distributed, preemption
from flax_bert.data import folder as folder_lib, pipeline, prepare
from flax_bert.data.config import DataOptions

PHASE1_SUFFIX = "_phase1"  # phase 1's folder is the main one's name + this, beside it


@dataclasses.dataclass(frozen=True)
class PretrainingData:
    """A prepared folder (and phase 1's), its meta.json and the options that feed it."""

    folder: str
    meta: dict
    options: DataOptions
    phase1: pipeline.Phase1 | None

    @property
    def vocab(self) -> str:
        return os.path.join(self.folder, folder_lib.VOCAB)

    @property
    def seq_length(self) -> int:
        return self.meta["max_seq_length"]

    def train_iterator(self, global_batch_size: int, seed: int) -> grain.DatasetIterator:
        """Endless, shuffled, masked train batches of this process (phase 1's first)."""
        return pipeline.make_train_iterator(self.folder, self.options,
                                            global_batch_size=global_batch_size, seed=seed,
                                            phase1=self.phase1)

    def eval_batches(self, global_batch_size: int) -> grain.IterDataset:
        """The held-out split in order, this process's share (see pipeline)."""
        return pipeline.make_eval_iterator(self.folder, self.options,
                                           global_batch_size=global_batch_size)


def pretraining_data(options: DataOptions, default_folder: str, *, phase1_steps: int = 0,
                     phase1_seq_length: int = 0, phase1_batch_size: int = 0
                     ) -> PretrainingData:
    """The run's data: `options.prepared_dir` (used as it is; it must hold a meta.json) or
    `default_folder`, prepared by process 0 when missing or stale; with `phase1_steps`,
    also phase 1's folder of `phase1_seq_length`-token examples for its first steps."""
    folder = options.prepared_dir or default_folder
    phase1 = None
    if phase1_steps:
        phase1 = pipeline.Phase1(
            folder.rstrip(os.sep) + PHASE1_SUFFIX,
            options.for_phase1(phase1_seq_length, os.path.join(folder, folder_lib.VOCAB)),
            phase1_batch_size, phase1_steps)
    if options.prepared_dir:  # used as it is, never prepared into: no meta.json is an error
        folder_lib.load_meta(folder)
    if distributed.is_writer():
        if not options.prepared_dir:
            with preemption.saying(folder_lib.interrupted(folder)):
                prepare.prepare(options, folder)
        if phase1:
            with preemption.saying(folder_lib.interrupted(phase1.prepared_dir)):
                prepare.prepare(phase1.options, phase1.prepared_dir)
    distributed.barrier("data prepared")
    return PretrainingData(folder, pipeline.load_meta(folder), options, phase1)
