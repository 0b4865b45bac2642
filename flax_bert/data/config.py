"""`config.data` as one frozen value: the corpus, how it is prepared, masked and fed.

Its one set of defaults is configs/default.py's `config.data`, where each field is
commented. `DataOptions.from_config` is the one reader of `config.data`; the prepare CLIs
make their flags from the same fields (`--max-seq-length` for `max_seq_length`, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
from typing import Any

from flax_bert import config_ranges
from flax_bert.data import vocab as vocab_lib
from flax_bert.errors import UserError


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """Every field of config.data (configs/default.py documents each)."""

    input: tuple[str, ...]  # files, globs or a `datasets` folder
    input_format: str
    text_column: str
    prepared_dir: str
    vocab: str
    vocab_size: int
    lowercase: bool
    max_seq_length: int
    short_seq_prob: float
    masked_lm_prob: float
    max_predictions_per_seq: int
    mask_token_prob: float
    random_token_prob: float
    whole_word_masking: bool
    dynamic_masking: bool
    dupe_factor: int
    packing: bool
    max_pairs_per_row: int
    eval_fraction: float
    prepare_seed: int
    shard_mb: float
    vocab_sample_mb: float
    num_workers: int
    worker_count: int
    prefetch: int

    @classmethod
    def from_config(cls, data_config: Any) -> DataOptions:
        """The value of `config.data` (a ConfigDict or a dict); `input` may be a comma
        separated string. A missing field is a UserError naming it."""
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in data_config:
                raise UserError(f"config.data has no field {field.name!r}; start the config "
                                f"from configs/default.py")
            values[field.name] = data_config[field.name]
        inp = values["input"]
        values["input"] = (tuple(p.strip() for p in inp.split(",")) if isinstance(inp, str)
                           else tuple(inp))
        return cls(**values)

    @classmethod
    def defaults(cls) -> DataOptions:
        """configs/default.py's config.data (the default run's corpus and settings)."""
        from configs import default

        return cls.from_config(default.get_config().data)

    def replace(self, **changes: Any) -> DataOptions:
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """A UserError naming the first field outside its range (flax_bert/config_ranges.py,
        the table a run checks its whole config against), or the masking probabilities
        summing to more than 1."""
        config_ranges.check(dataclasses.asdict(self), "data.")
        if self.mask_token_prob + self.random_token_prob > 1:
            raise UserError(f"config.data.mask_token_prob ({self.mask_token_prob}) + "
                            f"random_token_prob ({self.random_token_prob}) exceed 1; lower "
                            f"one of them")

    def prepared_key(self) -> dict:
        """The fields that decide the prepared output (not where it goes or who makes it,
        nor how the pipeline feeds it): meta.json's "options", the cache key. Packing's
        fields are in it only when packing is on: unpacked output is keyed by the other
        fields alone, whatever max_pairs_per_row says."""
        key = dataclasses.asdict(self)
        for name in FEED_ONLY_FIELDS + (() if self.packing else PACKING_FIELDS):
            key.pop(name)
        key["input"] = list(self.input)
        return key

    def masking(self, vocab_size: int, mask_id: int, vocab_path: str) -> dict:
        """Keyword arguments of `examples.mask_batch`."""
        return dict(
            vocab_size=vocab_size, mask_id=mask_id, masked_lm_prob=self.masked_lm_prob,
            max_predictions=self.max_predictions_per_seq,
            mask_token_prob=self.mask_token_prob, random_token_prob=self.random_token_prob,
            continuation=(vocab_lib.continuation_table(vocab_path)
                          if self.whole_word_masking else None))

    def for_phase1(self, seq_length: int, vocab: str) -> DataOptions:
        """Phase 1's options: the same corpus, split and masking at `seq_length`, with the
        main folder's `vocab`; max_predictions_per_seq scales with the length (20 at 128 is
        5 at 32), as BERT's did from 128 to 512. Packed when the main data is."""
        predictions = math.ceil(self.max_predictions_per_seq * seq_length / self.max_seq_length)
        return self.replace(max_seq_length=seq_length, max_predictions_per_seq=predictions,
                            vocab=vocab)


    @classmethod
    def from_prepared(cls, key: dict) -> DataOptions:
        """The options a folder was prepared with, from its meta.json "options" (the
        fields it does not hold, which do not change the output, as configs/default.py's)."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in key.items() if k in names}
        return cls.defaults().replace(**given | {"input": tuple(key["input"])})


def phase1_steps(train_config: Any, max_seq_length: int) -> int:
    """Phase 1's step count (0: one phase at max_seq_length); phase 1 must be shorter than
    `max_seq_length` (each field's own range is flax_bert/config_ranges.py's)."""
    t = train_config
    steps = int(t.phase1_fraction * t.steps)
    if steps and not t.phase1_seq_length < max_seq_length:
        raise UserError(
            f"config.train.phase1_seq_length ({t.phase1_seq_length}) must be shorter than "
            f"config.data.max_seq_length ({max_seq_length}); or set "
            f"config.train.phase1_fraction=0")
    return steps


def prepare_command(opts: DataOptions, output: str, phase1_seq_length: int) -> str:
    """The `python -m flax_bert.data.prepare` command that writes `opts`' data into
    `output` and, with `phase1_seq_length` (0: none), phase 1's: configs/default.py's
    config with a --config.data.* / --config.train.* override for each field that differs
    (a folder already holding this data is kept as it is)."""
    from configs import default

    base = default.get_config()
    defaults = DataOptions.from_config(base.data)
    parts = ["python -m flax_bert.data.prepare --input", *map(shlex.quote, opts.input)]
    for field in dataclasses.fields(DataOptions):
        name, value = field.name, getattr(opts, field.name)
        if name in FEED_ONLY_FIELDS + ("input",) or value == getattr(defaults, name):
            continue
        if name in PACKING_FIELDS[1:] and not opts.packing:
            continue
        parts.append(shlex.quote(f"--config.data.{name}={value}"))
    default_seq = (base.train.phase1_seq_length
                   if phase1_steps(base.train, base.data.max_seq_length) else 0)
    if phase1_seq_length != default_seq:
        parts.append(f"--config.train.phase1_seq_length={phase1_seq_length}"
                     if phase1_seq_length else "--config.train.phase1_fraction=0")
    return " ".join(parts + ["--output", shlex.quote(output)])


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of config.data that decides the prepared output, named after it
    (--max-seq-length for max_seq_length, --no-lowercase for lowercase=False, ...), with
    configs/default.py's value as its default."""
    defaults = DataOptions.defaults()
    for field in dataclasses.fields(DataOptions):
        if field.name in FEED_ONLY_FIELDS:
            continue
        flag, default = "--" + field.name.replace("_", "-"), getattr(defaults, field.name)
        help_text = f"config.data.{field.name} (default: %(default)s)"
        if field.name == "input":
            parser.add_argument(flag, nargs="+", required=True,
                                help="files, globs or a datasets dir")
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)


def from_flags(args: argparse.Namespace) -> DataOptions:
    """The parsed flags (add_flags') over configs/default.py's config.data."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DataOptions)
             if hasattr(args, f.name)}
    return DataOptions.defaults().replace(**given | {"input": tuple(args.input)})


# Fields that change where prepared data goes, who makes it or how the pipeline feeds it:
# not part of the prepared output's key.
FEED_ONLY_FIELDS = ("prepared_dir", "num_workers", "worker_count", "prefetch")
PACKING_FIELDS = ("packing", "max_pairs_per_row")
