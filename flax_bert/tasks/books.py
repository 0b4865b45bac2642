"""The book task: which book of the corpus a passage of 1-3 consecutive sentences is from.

Built from the bundled corpus (seven novels, one file each; the label is the file's name,
e.g. `emma`), and only from the documents (chapters) that pretraining holds out
(flax_bert.data.split.is_held_out with the pretraining config's data.eval_fraction and
data.prepare_seed), so a pretrained encoder has never seen a test passage, nor a train one.
Those documents are split by document into fine-tune train and test sets, every book in
both: per book, the `test_fraction` of its held-out chapters (at least one, at most all
but one) with the smallest hash go to test. Each chapter is cut into consecutive passages
of 1 to `max_sentences` sentences (lengths drawn from `seed`). Deterministic throughout.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import numpy as np

from flax_bert import files
from flax_bert.data import corpus, split
from flax_bert.errors import UserError

TRAIN_FILE, TEST_FILE = "train.jsonl", "test.jsonl"
SPLIT_SALT = 1  # added to prepare_seed: the train/test hash is independent of held-out's


def book_name(path: str) -> str:
    """`corpus/emma.txt.gz` -> `emma`."""
    return os.path.basename(path).split(".")[0]


def held_out_documents(task: Any) -> dict[str, list[list[str]]]:
    """book -> its documents (lists of sentences) that pretraining holds out, in order."""
    books: dict[str, list[list[str]]] = collections.defaultdict(list)
    paths = corpus.expand_inputs(task.input)
    for path, doc in corpus.iter_raw_documents(paths, task.input_format, task.text_column):
        sentences = corpus.to_sentences(doc, task.input_format)
        if split.is_held_out(sentences, task.eval_fraction, task.prepare_seed):
            books[book_name(path)].append(sentences)
    return dict(books)


def passages(sentences: list[str], max_sentences: int, rng: np.random.Generator) -> list[str]:
    """A document cut into consecutive passages of 1..max_sentences sentences."""
    out, start = [], 0
    while start < len(sentences):
        size = int(rng.integers(1, max_sentences + 1))
        out.append(" ".join(sentences[start:start + size]))
        start += size
    return out


def split_documents(books: dict[str, list[list[str]]], test_fraction: float,
                    seed: int) -> dict[str, list[tuple[str, list[str]]]]:
    """{"train": [(book, document)], "test": [...]}, split per book by document hash."""
    out: dict[str, list[tuple[str, list[str]]]] = {"train": [], "test": []}
    for book in sorted(books):
        docs = books[book]
        if len(docs) < 2:
            raise UserError(f"book {book!r} has {len(docs)} held-out document(s); the task "
                            f"needs 2 (one for train, one for test); raise "
                            f"config.books.eval_fraction")
        order = sorted(range(len(docs)), key=lambda i: split.document_hash(docs[i], seed))
        num_test = min(max(1, round(test_fraction * len(docs))), len(docs) - 1)
        test = set(order[:num_test])
        for i, doc in enumerate(docs):
            out["test" if i in test else "train"].append((book, doc))
    return out


def build(task: Any, out_dir: str) -> dict[str, int]:
    """Writes out_dir/train.jsonl and test.jsonl ({"text", "label"} rows); returns the
    number of passages and documents of each."""
    books = held_out_documents(task)
    if not books:
        raise UserError(f"no held-out document in {task.input} at eval_fraction "
                        f"{task.eval_fraction}; raise config.books.eval_fraction")
    splits = split_documents(books, task.test_fraction, task.prepare_seed + SPLIT_SALT)
    rng = np.random.default_rng(task.seed)
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for name, filename in (("train", TRAIN_FILE), ("test", TEST_FILE)):
        rows = [{"text": text, "label": book} for book, doc in splits[name]
                for text in passages(doc, task.max_sentences, rng)]
        files.write_text(os.path.join(out_dir, filename),
                         "".join(json.dumps(row) + "\n" for row in rows))
        counts[f"{name}_passages"] = len(rows)
        counts[f"{name}_documents"] = len(splits[name])
    return counts
