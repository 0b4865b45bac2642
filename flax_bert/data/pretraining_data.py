"""The front door of the data: what a pretraining run reads, prepared on first use, as one
value.

A job asks once, `pretraining_data(options, folder, ...)`. Without config.data.prepared_dir,
process 0 prepares what is missing in the run's folder (`prepare.run_folders`: the main data,
then phase 1's in its phase1/ with the main folder's vocab) and every process waits for it.
A prepared_dir is used as it is: never written into, nothing written beside it; it must
hold what the run's config needs (`check_prepared`: phase 1's data too, and the same
lengths, predictions and packing), else a UserError naming the differences and the fix.
The value hands out the train iterator and the held-out batches. Jobs use nothing else of
flax_bert.data's preparation.
"""

from __future__ import annotations

import dataclasses
import os

import grain

from flax_bert import distributed, preemption
from flax_bert.data import config as data_config, folder as folder_lib, pipeline, prepare
from flax_bert.data import storage
from flax_bert.data.config import DataOptions
from flax_bert.errors import UserError


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
    """The run's data: `options.prepared_dir` (used as it is, checked by `check_prepared`)
    or `default_folder`, prepared by process 0 when missing or stale; with `phase1_steps`,
    also phase 1's data of `phase1_seq_length`-token examples for its first steps."""
    folder = options.prepared_dir or default_folder
    phase1_length = phase1_seq_length if phase1_steps else 0
    folders = prepare.run_folders(options, folder, phase1_length)
    phase1 = None
    if phase1_steps:
        (phase1_options, phase1_folder), = folders[1:]
        phase1 = pipeline.Phase1(phase1_folder, phase1_options, phase1_batch_size,
                                 phase1_steps)
    if options.prepared_dir:  # only read
        check_prepared(options, folder, phase1_length)
    elif distributed.is_writer():
        for folder_options, out in folders:
            with preemption.saying(folder_lib.interrupted(out)):
                prepare.prepare(folder_options, out)
    distributed.barrier("data prepared")
    return PretrainingData(folder, pipeline.load_meta(folder), options, phase1)


def check_prepared(options: DataOptions, folder: str, phase1_seq_length: int = 0) -> None:
    """A UserError unless the prepared `folder` holds what a run of `options` (and a phase
    1 of `phase1_seq_length` tokens; 0: none) reads: its meta.json and files whole, its
    lengths, predictions, packing and masks the config's, and phase 1's data made from the
    same input and vocab at the run's phase-1 settings. Reads only."""
    meta = folder_lib.load_meta(folder)
    prepared = DataOptions.from_prepared(meta["options"])
    differ = [(name, ours, theirs) for name, ours, theirs in _run_fields(options, meta)
              if ours != theirs]
    if differ:
        remake = data_config.prepare_command(options.replace(input=prepared.input), "NEW_DIR",
                                             phase1_seq_length)
        raise UserError(
            f"{os.path.join(folder, folder_lib.META)}: the prepared data differs from the "
            f"run's config.data: {', '.join(f'{n}={t} (config: {o})' for n, o, t in differ)}; "
            f"train on it as prepared with "
            f"{' '.join(f'--config.data.{n}={t}' for n, _, t in differ)}, or prepare this "
            f"config's data with: {remake} and train with --config.data.prepared_dir=NEW_DIR")
    if not phase1_seq_length:
        return
    short_dir = folder_lib.phase1_folder(folder)
    make = data_config.prepare_command(prepared, folder, phase1_seq_length)
    short_meta = folder_lib.read_meta(storage.path(short_dir))
    if short_meta is None:
        raise UserError(
            f"{folder} has no phase-1 data ({os.path.join(short_dir, folder_lib.META)}): "
            f"this run trains phase 1 on {phase1_seq_length}-token examples "
            f"(config.train.phase1_fraction, phase1_seq_length); add it from {folder}'s input "
            f"and vocab with: {make} (the data in {folder} is kept), or train one phase with "
            f"--config.train.phase1_fraction=0")
    folder_lib.load_meta(short_dir)
    have = dict(short_meta["options"], source_files=short_meta["source_files"])
    differ = _differences(have, _phase1_key(prepared, phase1_seq_length, folder, meta))
    if differ:
        length = short_meta["max_seq_length"]
        use_it = (f", or train phase 1 on it with --config.train.phase1_seq_length={length}"
                  if not _differences(have, _phase1_key(prepared, length, folder, meta))
                  else "")
        raise UserError(
            f"{os.path.join(short_dir, folder_lib.META)}: phase 1's data is not what this "
            f"run needs (made from {folder}'s options at config.train.phase1_seq_length="
            f"{phase1_seq_length}): {_compared(differ)}; delete {short_dir} and run: "
            f"{make}{use_it}")


def _phase1_key(prepared: DataOptions, length: int, folder: str, meta: dict) -> dict:
    """What phase 1's meta.json says ("options" and "source_files") when it was made at
    `length` tokens from the folder's input and vocab (the vocab by checksum)."""
    short = prepared.for_phase1(length, os.path.join(folder, folder_lib.VOCAB))
    return dict(short.prepared_key(), vocab_crc32=meta["files"][folder_lib.VOCAB]["crc32"],
                source_files=meta["source_files"])


def _differences(have: dict, want: dict) -> list[tuple[str, object, object]]:
    """(key, have's value, want's) where they differ; the vocab's path and the format
    version aside (the vocab is compared by checksum, the format by load_meta)."""
    return [(k, have.get(k), want.get(k)) for k in sorted(want.keys() | have.keys())
            if k not in ("vocab", "format_version") and have.get(k) != want.get(k)]


def _run_fields(options: DataOptions, meta: dict) -> list[tuple[str, object, object]]:
    """(config.data field, the run's value, the prepared folder's) of what the run reads
    as prepared."""
    fields = [("max_seq_length", options.max_seq_length, meta["max_seq_length"]),
              ("max_predictions_per_seq", options.max_predictions_per_seq,
               meta["max_predictions_per_seq"]),
              ("packing", options.packing, meta.get("packed", False))]
    if options.packing and meta.get("packed", False):
        fields.append(("max_pairs_per_row", options.max_pairs_per_row,
                       meta["max_pairs_per_row"]))
    if not options.dynamic_masking and not meta["static_train_masks"]:  # no masks to read
        fields.append(("dynamic_masking", False, True))
    return fields


def _compared(differ: list[tuple[str, object, object]]) -> str:
    """name=its value (wanted: the run's), ...; values longer than 60 characters cut."""
    def shown(value):
        text = str(value)
        return text[:57] + "..." if len(text) > 60 else text
    return ", ".join(f"{name}={shown(have)} (wanted: {shown(want)})"
                     for name, have, want in differ)
