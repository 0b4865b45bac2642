"""The held-out split: whole documents, chosen by a hash of the document's own text.

Any process that holds a document decides alone whether it is held out (no corpus-wide
permutation), so prepare can run per shard, per machine or as a Beam pipeline, and a
downstream task can find pretraining's held-out documents from the raw text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_UNIT = 2.0 ** 64  # The hash is read as a uint64, then scaled to [0, 1).


def document_hash(sentences: Sequence[str], seed: int) -> float:
    """A uniform number in [0, 1) from the document's sentences and the seed."""
    h = hashlib.blake2b(digest_size=8, salt=seed.to_bytes(16, "little", signed=True))
    for sentence in sentences:
        h.update(sentence.encode("utf-8"))
        h.update(b"\n")
    return int.from_bytes(h.digest(), "little") / _UNIT


def is_held_out(sentences: Sequence[str], eval_fraction: float, seed: int) -> bool:
    """True when the document belongs to the held-out (eval) split."""
    return document_hash(sentences, seed) < eval_fraction
