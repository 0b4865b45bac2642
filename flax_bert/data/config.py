"""`config.data` as one frozen value: the corpus, how it is prepared, masked and fed.

Its one set of defaults is `DataOptions`' own, where each field is commented; configs/
default.py's `config.data` is made from them. `DataOptions.from_config` is the one reader of
`config.data`; the prepare CLIs make their flags from the same fields (`--max-seq-length`
for `max_seq_length`, ...), with the same defaults.
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
    """Every field of config.data, with its default (configs/default.py starts from these)."""

    # Files/globs (comma separated in a config) or a `datasets` dir; () = none given (the
    # default run names the bundled corpus, configs/default.py).
    input: tuple[str, ...] = ()
    input_format: str = "auto"  # auto | sentences (one per line) | paragraphs (raw prose).
    text_column: str = "text"  # Column holding the text in a `datasets` dataset on disk.
    # Prepared shards; "" means WORKDIR/prepared (prepared on first run). A given folder is
    # used as it is, never prepared into (made by `python -m flax_bert.data.prepare`).
    prepared_dir: str = ""
    vocab: str = ""  # An existing BERT vocab.txt; "" trains a WordPiece vocab on the corpus.
    vocab_size: int = 8192  # Size of the trained WordPiece vocab (when vocab is "").
    lowercase: bool = True  # BertNormalizer lower-casing and accent stripping.
    max_seq_length: int = 128  # Tokens per example, [CLS] A [SEP] B [SEP] included.
    short_seq_prob: float = 0.1  # Probability of a shorter target length (as in BERT).
    masked_lm_prob: float = 0.15  # Fraction of tokens chosen for prediction.
    max_predictions_per_seq: int = 20  # Cap on chosen positions per example.
    mask_token_prob: float = 0.8  # Of the chosen: replaced with [MASK] ...
    random_token_prob: float = 0.1  # ... replaced with a random token; the rest stay.
    whole_word_masking: bool = False  # Mask all WordPieces of a word together.
    dynamic_masking: bool = True  # Fresh masks every epoch in the pipeline (else fixed once).
    dupe_factor: int = 5  # Times the corpus is paired into examples (different pairings).
    # Packing (decided at prepare time): whole sentence pairs are put together in rows of
    # max_seq_length tokens, at most max_pairs_per_row in a row (per shard: the longest pair
    # left and the one or two that fill its row most, flax_bert/data/packing.py), so short
    # pairs do not pay for padding (benchmarks/README.md: 50% -> 99% real tokens at 512 on
    # encyclopedia-like text). Attention stays inside each pair, positions restart at each
    # pair's [CLS], NSP reads each pair's [CLS], and each pair keeps its own masked
    # predictions. With packing, train.global_batch_size and train.phase1_batch_size count
    # rows, not pairs (the size files pick them for ~256 pairs a step). The default run is
    # unpacked: its chapters already fill 97% of its 128-token rows (README).
    packing: bool = False
    max_pairs_per_row: int = 3  # NVIDIA's and Graphcore's packed BERT use 3.
    # Fraction of documents held out for evaluation, chosen by a hash of each document
    # (flax_bert/data/split.py). 0.15 holds out 55 of the bundled corpus's 404 chapters, at
    # least 2 of each book, which the downstream book task is built from. The size files
    # (big corpora) hold out 1%.
    eval_fraction: float = 0.15
    prepare_seed: int = 12345  # Seeds pairing, held-out split and static masks in prepare.
    # Prepare works in shards of about this many MB of text (the bundled corpus is one):
    # memory is bounded by it, and random next segments are drawn within a shard.
    shard_mb: float = 8.0
    vocab_sample_mb: float = 256.0  # The vocab is trained on the first this many MB of text.
    num_workers: int = 0  # Processes making shards in prepare (0 = all CPU cores).
    worker_count: int = 0  # grain worker processes for the train pipeline (0 = in-process).
    prefetch: int = 2  # Batches prepared ahead of the train step.

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
        fields it does not hold, which do not change the output, at their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in key.items() if k in names}
        return cls().replace(**given | {"input": tuple(key["input"])})


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
    `output` and, with `phase1_seq_length` (0: none), phase 1's: a flag for each field that
    differs from DataOptions' defaults (a folder already holding this data is kept as it
    is)."""
    defaults = DataOptions()
    parts = ["python -m flax_bert.data.prepare --input", *map(shlex.quote, opts.input)]
    for field in dataclasses.fields(DataOptions):
        name, value = field.name, getattr(opts, field.name)
        if name in FEED_ONLY_FIELDS + ("input",) or value == getattr(defaults, name):
            continue
        if name in PACKING_FIELDS[1:] and not opts.packing:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts += [flag, shlex.quote(str(value))]
    if phase1_seq_length:
        parts += ["--phase1-seq-length", str(phase1_seq_length)]
    return " ".join(parts + ["--output", shlex.quote(output)])


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of config.data that decides the prepared output, named after it
    (--max-seq-length for max_seq_length, --no-lowercase for lowercase=False, ...), with
    DataOptions' default as its default."""
    defaults = DataOptions()
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
    """The parsed flags (add_flags') over DataOptions' defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DataOptions)
             if f.name not in FEED_ONLY_FIELDS and hasattr(args, f.name)}
    return DataOptions().replace(**given | {"input": tuple(args.input)})


# Fields that change where prepared data goes, who makes it or how the pipeline feeds it:
# not part of the prepared output's key.
FEED_ONLY_FIELDS = ("prepared_dir", "num_workers", "worker_count", "prefetch")
PACKING_FIELDS = ("packing", "max_pairs_per_row")
