"""Labelled text for fine-tuning: read and tokenize (batched by flax_bert.tasks.example_batches).

Input: a JSONL file (one object a line), a CSV file (a header row), or a `datasets`
directory written by `save_to_disk`, with a text column, an optional second-text column
(sentence pairs) and a label column. Labels are read as strings; the train file's label
set, sorted (numbers by value), gives the class ids.

Tokenized with the model's vocab.txt through HF `tokenizers` (flax_bert.data.vocab):
`[CLS] text [SEP]` or `[CLS] text [SEP] text_pair [SEP]`, truncated longest-first to
`max_seq_length` and padded.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any

import numpy as np

from flax_bert.data import corpus, vocab as vocab_lib
from flax_bert.errors import UserError


@dataclasses.dataclass(frozen=True)
class Columns:
    text: str = "text"
    text_pair: str = ""  # "" or absent from the file: single sentences
    label: str = "label"


@dataclasses.dataclass(frozen=True)
class Examples:
    """Rows of one file: texts, optional second texts, label strings."""

    path: str
    texts: list[str]
    pairs: list[str] | None
    labels: list[str]


def _read_rows(path: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, column names) of a JSONL / CSV file or a `datasets` directory."""
    if corpus.is_dataset_dir(path):
        import datasets

        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            raise UserError(f"{path}: holds splits {list(ds)}; pass the folder of one split "
                            f"(e.g. {os.path.join(path, next(iter(ds)))})")
        return ds.to_list(), list(ds.column_names)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file; check config.data.train / config.data.eval")
    lines = list(corpus.read_lines(path))
    if path.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        delimiter = "\t" if ".tsv" in path else ","
        reader = csv.DictReader(lines, delimiter=delimiter)
        return list(reader), list(reader.fieldnames or [])
    rows, names = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: not a JSON object ({e.msg}); write one object "
                            f"a line, or name the file .csv") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: not a JSON object; write one object a line")
        rows.append(row)
        names.update(dict.fromkeys(row))
    return rows, list(names)


def read_examples(path: str, columns: Columns) -> Examples:
    """The examples of `path`; an empty file, a missing column or an empty text is a
    UserError naming the file."""
    rows, names = _read_rows(path)
    if not rows:
        raise UserError(f"{path}: no examples (empty file); give it rows with "
                        f"{columns.text!r} and {columns.label!r}")
    for field, name in (("text", columns.text), ("label", columns.label)):
        if name not in names:
            raise UserError(f"{path}: no column {name!r} (has {', '.join(names)}); set "
                            f"config.data.{field}_column")
    use_pairs = bool(columns.text_pair) and columns.text_pair in names
    texts, pairs, labels = [], [] if use_pairs else None, []
    for number, row in enumerate(rows, start=1):
        text, label = row.get(columns.text), row.get(columns.label)
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}: row {number} has no text in {columns.text!r}; "
                            f"remove the row or fill it in")
        if label is None or str(label) == "":
            raise UserError(f"{path}: row {number} has no label in {columns.label!r}; "
                            f"remove the row or label it")
        texts.append(text)
        labels.append(str(label))
        if pairs is not None:
            pairs.append(str(row.get(columns.text_pair) or ""))
    return Examples(path, texts, pairs, labels)


def label_names(examples: Examples) -> list[str]:
    """The sorted label set (integers by value, then the other strings)."""
    def key(name: str) -> tuple[int, int, str]:
        is_int = name.lstrip("-").isdigit()
        return (0, int(name), "") if is_int else (1, 0, name)

    return sorted(set(examples.labels), key=key)


def label_ids(examples: Examples, labels: list[str]) -> np.ndarray:
    """[n] int32 class ids; a label outside `labels` is a UserError."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(examples.labels) - set(index))
    if unknown:
        raise UserError(f"{examples.path}: label {unknown[0]!r} ({len(unknown)} unknown in "
                        f"all) is not among the model's labels ({', '.join(labels)}); fix "
                        f"the file or train on a file that has it")
    return np.array([index[name] for name in examples.labels], np.int32)


def make_tokenizer(vocab_path: str, lowercase: bool, max_seq_length: int) -> Any:
    """The BERT tokenizer of a vocab.txt that adds [CLS]/[SEP], truncates longest-first
    and pads (flax_bert.data.vocab.input_tokenizer)."""
    return vocab_lib.input_tokenizer(vocab_path, lowercase, max_seq_length, "longest_first")


def encode(examples: Examples, tokenizer: Any, labels: list[str]) -> dict[str, np.ndarray]:
    """Arrays of all examples: input_ids, token_type_ids, attention_mask [n, S] and
    label [n]."""
    inputs = (list(zip(examples.texts, examples.pairs)) if examples.pairs is not None
              else examples.texts)
    encodings = tokenizer.encode_batch(inputs)
    return {
        "input_ids": np.array([e.ids for e in encodings], np.int32),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int32),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int32),
        "label": label_ids(examples, labels),
    }
