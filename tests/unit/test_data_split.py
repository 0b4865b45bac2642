"""The hash split: deterministic, independent of order, close to the asked fraction."""

import numpy as np

from flax_bert.data import split


def _docs(n: int) -> list[list[str]]:
    return [[f"Document {i} begins.", f"It has a second sentence, number {i * 7}."]
            for i in range(n)]


def test_same_document_same_decision_any_order():
    docs = _docs(200)
    first = [split.is_held_out(d, 0.2, seed=3) for d in docs]
    again = [split.is_held_out(d, 0.2, seed=3) for d in reversed(docs)][::-1]
    assert first == again


def test_fraction_and_seed():
    docs = _docs(4000)
    u = np.array([split.document_hash(d, seed=1) for d in docs])
    assert np.all((u >= 0) & (u < 1))
    assert abs(np.mean(u < 0.15) - 0.15) < 0.02  # binomial sd ~0.006
    other = np.array([split.document_hash(d, seed=2) for d in docs])
    assert np.mean((u < 0.15) == (other < 0.15)) < 0.9  # another seed, another split


def test_text_decides():
    a = ["One sentence.", "Two sentences."]
    assert split.document_hash(a, 0) != split.document_hash(["One sentence.Two sentences."], 0)
    assert split.document_hash(a, 0) == split.document_hash(list(a), 0)
    assert not split.is_held_out(a, 0.0, 0) and split.is_held_out(a, 1.0, 0)
