"""Small generated corpora for tiny runs (the harnesses here and the tests): a tiny train.py
run's corpus, and a marker corpus whose every word belongs to one document."""

from __future__ import annotations

import random
import string

import numpy as np

WORD_LEN = 7
WORDS_PER_DOC = 20


def marker_corpus(
    path: str, num_docs: int = 12, sentences: int = 60, seed: int = 0,
    min_sentences: int | None = None,
) -> dict[str, int]:
    """Write a sentence-per-line corpus; every word belongs to exactly one document, which
    has `sentences` sentences (with min_sentences: a number drawn in [min, sentences]).
    Returns {word: document index}."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(string.ascii_lowercase))
    word_doc: dict[str, int] = {}
    docs = []
    for d in range(num_docs):
        words = []
        while len(words) < WORDS_PER_DOC:
            w = "".join(rng.choice(letters, WORD_LEN))
            if w not in word_doc:
                word_doc[w] = d
                words.append(w)
        lines = []
        count = sentences if min_sentences is None else int(
            rng.integers(min_sentences, sentences + 1))
        for _ in range(count):
            n = int(rng.integers(4, 12))
            lines.append(" ".join(rng.choice(words, n)).capitalize() + ".")
        docs.append("\n".join(lines))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(docs) + "\n")
    return word_doc


def write_corpus(path: str) -> None:
    """40 documents of 8 random sentences each (one sentence per line)."""
    rng = random.Random(0)
    words = ("the cat dog sat on a mat and ran far away from home while birds sang loud "
             "songs in green trees under blue sky").split()
    docs = ["\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
                      .capitalize() + "." for _ in range(8)) for _ in range(40)]
    with open(path, "w") as f:
        f.write("\n\n".join(docs) + "\n")
