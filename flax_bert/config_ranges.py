"""The range of every numeric config field (configs/*.py: pretraining, fine-tuning, GLUE,
SQuAD), in one table keyed by the dotted field name, and the one check of a config
against it. A run checks its config here before it prepares data or touches a device
(trainer/checks.check_config); the prepare CLIs check their config.data fields here too
(DataOptions.check). A value out of range is one UserError naming the field, its range and
the fix. Checks that relate two fields (a batch that must divide, phase 1 shorter than the
data's length, the mesh against the device count) stay with the code that needs them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Mapping

from flax_bert.data import examples, records, vocab as vocab_lib
from flax_bert.errors import UserError


@dataclasses.dataclass(frozen=True)
class Range:
    """[low, high] (an end excluded when open; inf: unbounded), finite, and `special`
    values outside it that mean something: value -> meaning. A special value is allowed only
    in a config that has the field `special_needs` (when given)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    special: tuple[tuple[float, str], ...] = ()
    special_needs: str = ""

    def contains(self, value: float, config_fields: Mapping[str, Any] | None = None) -> bool:
        """Whether `value` is allowed (`config_fields`: the config's dotted fields, for
        special_needs; None: as if it had them all)."""
        if any(value == v for v, _ in self.special):
            return (not self.special_needs or config_fields is None
                    or self.special_needs in config_fields)
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self, config_fields: Mapping[str, Any] | None = None) -> str:
        """What to use, in words: "a value >= 1", "a value in [0, 1)", "a finite number",
        "a value >= 1, or 0 (...)"."""
        low, high = _number(self.low), _number(self.high)
        if math.isinf(self.low) and math.isinf(self.high):
            rule = "a finite number"
        elif math.isinf(self.high):
            rule = f"a value {'>' if self.low_open else '>='} {low}"
        elif math.isinf(self.low):
            rule = f"a value {'<' if self.high_open else '<='} {high}"
        else:
            rule = (f"a value in {'(' if self.low_open else '['}{low}, {high}"
                    f"{')' if self.high_open else ']'}")
        allowed = self.special if (not self.special_needs or config_fields is None
                                   or self.special_needs in config_fields) else ()
        return rule + "".join(f", or {_number(v)} ({meaning})" for v, meaning in allowed)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def at_least(low: float, **kwargs: Any) -> Range:
    return Range(low=low, **kwargs)


def above(low: float, **kwargs: Any) -> Range:
    return Range(low=low, low_open=True, **kwargs)


PROBABILITY = Range(0, 1)  # [0, 1]
RATE = Range(0, 1, high_open=True)  # [0, 1): a dropout rate, a fraction that leaves some
FRACTION = Range(0, 1, low_open=True, high_open=True)  # (0, 1): both parts non-empty
COUNT = at_least(1)  # >= 1
OFF_OR_COUNT = at_least(0)  # >= 0, 0 meaning as the field's comment says
SEED = Range(0, 2**32, high_open=True)
# Tokens of a row: [CLS] A [SEP] B [SEP] and at least one more, up to what a record stores.
SEQ_LENGTH = Range(examples.NUM_SPECIAL_IN_PAIR + 1, records.MAX_SEQ_LENGTH, low_open=True)
MESH_AXIS = at_least(1, special=((-1, "the rest of the devices"),))

# Dotted field name -> its range. configs/default.py (and the size files that build on it),
# configs/finetune.py, configs/glue.py and configs/squad.py; a field of the same name means
# the same in each.
RANGES: dict[str, Range] = {
    "seed": SEED,
    # ---- config.model (HF BertConfig names).
    "model.vocab_size": at_least(1, special=((0, "the data's / the vocab's size"),)),
    "model.hidden_size": COUNT,
    "model.num_hidden_layers": COUNT,
    "model.num_attention_heads": COUNT,
    "model.intermediate_size": COUNT,
    "model.hidden_dropout_prob": RATE,
    "model.attention_probs_dropout_prob": RATE,
    "model.max_position_embeddings": COUNT,
    "model.type_vocab_size": COUNT,
    "model.initializer_range": above(0),
    "model.layer_norm_eps": above(0),
    "model.pad_token_id": at_least(0),
    # ---- config.data: pretraining's corpus, prepare and pipeline; fine-tuning's inputs.
    "data.vocab_size": above(len(vocab_lib.SPECIAL_TOKENS)),
    "data.max_seq_length": SEQ_LENGTH,
    "data.short_seq_prob": PROBABILITY,
    "data.masked_lm_prob": FRACTION,
    "data.max_predictions_per_seq": COUNT,
    "data.mask_token_prob": PROBABILITY,
    "data.random_token_prob": PROBABILITY,
    "data.dupe_factor": COUNT,
    "data.max_pairs_per_row": COUNT,
    "data.eval_fraction": RATE,
    "data.prepare_seed": SEED,
    "data.shard_mb": above(0),
    "data.vocab_sample_mb": above(0),
    "data.num_workers": OFF_OR_COUNT,  # 0: all CPU cores
    "data.worker_count": OFF_OR_COUNT,  # 0: in-process
    "data.prefetch": OFF_OR_COUNT,
    # ---- config.train.
    "train.steps": at_least(1, special=((0, "train.epochs over the train set"),),
                            special_needs="train.epochs"),
    "train.epochs": above(0),
    "train.global_batch_size": COUNT,
    "train.phase1_fraction": RATE,  # 0: one phase
    "train.phase1_seq_length": SEQ_LENGTH,
    "train.phase1_batch_size": COUNT,
    "train.grad_accum_steps": COUNT,
    "train.steps_per_call": COUNT,
    "train.dropout": RATE,
    "train.log_every": COUNT,
    "train.eval_every": OFF_OR_COUNT,  # 0: only at the end
    "train.eval_batches": OFF_OR_COUNT,  # 0: the whole held-out split
    "train.final_eval_batches": OFF_OR_COUNT,
    "train.eval_batch_size": COUNT,
    "train.max_consecutive_nonfinite": OFF_OR_COUNT,  # 0: never stops
    "train.stop_after": OFF_OR_COUNT,  # 0: runs to train.steps
    # ---- config.optimizer.
    "optimizer.learning_rate": above(0),
    "optimizer.warmup_steps": at_least(0),
    "optimizer.warmup_fraction": RATE,
    "optimizer.end_lr_fraction": PROBABILITY,
    "optimizer.b1": RATE,
    "optimizer.b2": RATE,
    "optimizer.eps": above(0),
    "optimizer.weight_decay": at_least(0),
    "optimizer.grad_clip_norm": at_least(0),  # 0: no clipping
    # ---- config.mesh, config.distributed, config.checkpoint.
    "mesh.data": MESH_AXIS,
    "mesh.fsdp": MESH_AXIS,
    "mesh.tensor": MESH_AXIS,
    "distributed.num_processes": COUNT,
    "distributed.process_id": at_least(0),
    "checkpoint.every": COUNT,
    "checkpoint.keep": COUNT,
    # ---- config.books (the book task) and config.cloze (the cloze task): their
    # eval_fraction and prepare_seed are the pretraining run's.
    "books.eval_fraction": FRACTION,
    "books.prepare_seed": SEED,
    "books.test_fraction": FRACTION,
    "books.max_sentences": COUNT,
    "books.seed": SEED,
    "cloze.eval_fraction": FRACTION,
    "cloze.prepare_seed": SEED,
    "cloze.dev_fraction": FRACTION,
    "cloze.min_sentences": COUNT,
    "cloze.max_sentences": COUNT,
    "cloze.max_passage_words": COUNT,
    "cloze.min_passage_sentences": COUNT,
    "cloze.max_blank_position": COUNT,
    "cloze.min_word_length": COUNT,
    "cloze.blanks_per_sentence": COUNT,
    "cloze.seed": SEED,
    # ---- config.squad.
    "squad.doc_stride": COUNT,
    "squad.max_query_length": COUNT,
    "squad.n_best_size": COUNT,
    "squad.max_answer_length": COUNT,
    "squad.null_score_diff_threshold": Range(),  # a logit gap: any finite number
}


def numeric_fields(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted name, value) of each int / float field of a (nested) ConfigDict or dict,
    in its order; bools are not numbers here."""
    for name, value in config.items():
        if isinstance(value, Mapping) or hasattr(value, "items"):
            yield from numeric_fields(value, f"{prefix}{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield prefix + name, value


def check(config: Mapping[str, Any], prefix: str = "") -> None:
    """A UserError naming the first numeric field of `config` outside its range. `prefix`:
    where `config` sits in a run's config ("data." for config.data alone). A field the table
    does not know is left alone (a user's own config may add some)."""
    fields = dict(numeric_fields(config, prefix))
    for name, value in fields.items():
        rule = RANGES.get(name)
        if rule is not None and not rule.contains(value, fields):
            raise UserError(f"config.{name}={value!r} is out of range; set it to "
                            f"{rule.describe(fields)}")
