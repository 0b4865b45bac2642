"""Pretraining examples: format, masking statistics, NSP labels, whole-word masking."""

import os

import numpy as np
import pytest

from tests.data_fixtures import prepared, read_split, unmask
from flax_bert.data import examples, pipeline, vocab as vocab_lib

NUM_BATCHES = 30
BATCH = 64


def _batches(out, opts, n=NUM_BATCHES, seed=0):
    it = pipeline.make_train_iterator(
        out, opts, global_batch_size=BATCH, seed=seed, process_index=0, process_count=1
    )
    return [next(it) for _ in range(n)]


def _check_format(batch, meta, special):
    b = batch
    seq, preds = meta["max_seq_length"], meta["max_predictions_per_seq"]
    assert b["input_ids"].shape == (BATCH, seq) and b["input_ids"].dtype == np.int32
    assert b["masked_positions"].shape == (BATCH, preds) and b["masked_weights"].dtype == np.float32
    ids, tt, am = unmask(b), b["token_type_ids"], b["attention_mask"]
    for i in range(BATCH):
        n = int(am[i].sum())
        assert np.all(am[i, :n] == 1) and np.all(am[i, n:] == 0)
        assert ids[i, 0] == special.cls and ids[i, n - 1] == special.sep
        seps = np.flatnonzero(ids[i, :n] == special.sep)
        assert len(seps) == 2 and seps[1] == n - 1 and 1 < seps[0] < n - 2
        assert np.all(tt[i, : seps[0] + 1] == 0) and np.all(tt[i, seps[0] + 1 : n] == 1)
        assert np.all(tt[i, n:] == 0) and np.all(ids[i, n:] == special.pad)
        assert np.all(b["input_ids"][i, n:] == special.pad)
        w = b["masked_weights"][i] > 0
        k = int(w.sum())
        assert np.all(w[:k]) and not np.any(w[k:])  # real predictions first
        pos = b["masked_positions"][i]
        assert np.all(pos[k:] == 0) and np.all(b["masked_ids"][i, k:] == 0)
        assert np.all(np.diff(pos[:k]) > 0)  # sorted, distinct
        assert not np.any(np.isin(pos[:k], [0, seps[0], n - 1])) and np.all(pos[:k] < n)
        assert 1 <= k <= preds
    assert set(np.unique(b["next_sentence_label"])) <= {0, 1}


def test_every_example_has_the_format(tmp_path_factory):
    out, _, meta, opts = prepared(tmp_path_factory)
    special = vocab_lib.special_ids(os.path.join(out, "vocab.txt"))
    for batch in _batches(out, opts, n=5):
        _check_format(batch, meta, special)


def test_static_masks_have_the_format(tmp_path_factory):
    out, _, meta, opts = prepared(tmp_path_factory, dynamic_masking=False)
    special = vocab_lib.special_ids(os.path.join(out, "vocab.txt"))
    assert meta["static_train_masks"]
    b1, b2 = _batches(out, opts, n=2)
    _check_format(b1, meta, special)
    # Static: every batch row is one of the masked rows written at prepare time.
    on_disk = read_split(out, "train")["masked_input_ids"]
    written = {row.tobytes() for row in on_disk}
    for b in _batches(out, opts, n=meta["num_train_examples"] // BATCH * 2 + 4):
        assert all(row.tobytes() in written for row in b["input_ids"])


def test_masking_rates(tmp_path_factory):
    out, _, meta, opts = prepared(tmp_path_factory, max_seq_length=128, max_predictions_per_seq=20)
    special = vocab_lib.special_ids(os.path.join(out, "vocab.txt"))
    batches = _batches(out, opts)
    chosen = sum(b["masked_weights"].sum() for b in batches)
    candidates = sum(b["attention_mask"].sum() - 3 * BATCH for b in batches)
    assert abs(chosen / candidates - 0.15) < 0.01
    orig = np.concatenate([b["masked_ids"][b["masked_weights"] > 0] for b in batches])
    now = np.concatenate([
        np.take_along_axis(b["input_ids"], b["masked_positions"], 1)[b["masked_weights"] > 0]
        for b in batches
    ])
    is_mask = now == special.mask
    kept = (now == orig) & ~is_mask
    assert abs(is_mask.mean() - 0.8) < 0.02
    assert abs(kept.mean() - 0.1) < 0.02
    assert abs((~is_mask & ~kept).mean() - 0.1) < 0.02


def test_mask_batch_rates_on_random_tokens():
    rng = np.random.default_rng(0)
    b, seq, vocab = 2000, 128, 5000
    len_a = rng.integers(1, 60, b)
    len_b = rng.integers(1, seq - 3 - len_a + 1)
    ids = rng.integers(5, vocab, (b, seq)).astype(np.int32)
    m = examples.mask_batch(
        ids, len_a, len_b, np.random.default_rng(1), vocab_size=vocab, mask_id=4,
        masked_lm_prob=0.15, max_predictions=40, mask_token_prob=0.8, random_token_prob=0.1,
    )
    w = m["masked_weights"] > 0
    assert abs(w.sum() / (len_a + len_b).sum() - 0.15) < 0.01
    now = np.take_along_axis(m["input_ids"], m["masked_positions"], 1)[w]
    orig = m["masked_ids"][w]
    assert np.array_equal(orig, np.take_along_axis(ids, m["masked_positions"], 1)[w])
    assert abs((now == 4).mean() - 0.8) < 0.02
    assert abs(((now == orig) & (now != 4)).mean() - 0.1) < 0.02
    # Unchosen positions are untouched.
    changed = m["input_ids"] != ids
    rows = np.broadcast_to(np.arange(b)[:, None], w.shape)
    changed[rows[w], m["masked_positions"][w]] = False
    assert not changed.any()


def test_nsp_labels_and_documents(tmp_path_factory):
    out, word_doc, meta, opts = prepared(tmp_path_factory)
    tokens = vocab_lib.read_vocab(os.path.join(out, "vocab.txt"))
    assert all(w in tokens for w in word_doc), "marker words must be whole tokens"
    tok_doc = np.full(len(tokens), -1)
    for w, d in word_doc.items():
        tok_doc[tokens.index(w)] = d
    special = vocab_lib.special_ids(os.path.join(out, "vocab.txt"))
    labels = []
    for b in _batches(out, opts, n=10):
        ids = unmask(b)
        for i in range(BATCH):
            sep = np.flatnonzero(ids[i] == special.sep)
            docs_a = set(tok_doc[ids[i, 1 : sep[0]]]) - {-1}
            docs_b = set(tok_doc[ids[i, sep[0] + 1 : sep[1]]]) - {-1}
            assert len(docs_a) == 1 and len(docs_b) == 1
            label = b["next_sentence_label"][i]
            assert (docs_a != docs_b) == (label == examples.NOT_NEXT)
            labels.append(label)
    assert abs(np.mean(labels) - 0.5) < 0.1  # ~200 distinct pairs: 3 binomial sd


def test_eval_documents_are_held_out(tmp_path_factory):
    out, _, meta, _ = prepared(tmp_path_factory)
    train, ev = read_split(out, "train"), read_split(out, "eval")
    train_docs = set(train["doc_a"]) | set(train["doc_b"])
    eval_docs = set(ev["doc_a"]) | set(ev["doc_b"])
    assert eval_docs and not (train_docs & eval_docs)
    assert len(eval_docs) == meta["num_eval_documents"]


def test_whole_word_masking_never_splits_a_word(tmp_path_factory):
    out, _, meta, opts = prepared(tmp_path_factory, vocab_size=80, whole_word_masking=True)
    cont = vocab_lib.continuation_table(os.path.join(out, "vocab.txt"))
    n_multi = 0
    for b in _batches(out, opts, n=10):
        ids = unmask(b)
        chosen = np.zeros(ids.shape, bool)
        rows = np.broadcast_to(np.arange(BATCH)[:, None], b["masked_weights"].shape)
        w = b["masked_weights"] > 0
        chosen[rows[w], b["masked_positions"][w]] = True
        special = vocab_lib.special_ids(os.path.join(out, "vocab.txt"))
        prev_is_word = ~np.isin(ids[:, :-1], [special.cls, special.sep, special.pad])
        joins = cont[ids[:, 1:]] & prev_is_word  # [b, L-1] piece joins the previous one
        assert np.all(chosen[:, 1:][joins] == chosen[:, :-1][joins])
        n_multi += int((chosen[:, 1:] & joins).sum())
    assert n_multi > 0  # multi-piece words were masked at all


@pytest.mark.parametrize("la,lb,m", [(10, 3, 8), (3, 10, 8), (5, 5, 7), (6, 5, 6), (2, 2, 9)])
def test_truncate_lengths_match_bert_loop(la, lb, m):
    a, b = list(range(la)), list(range(lb))
    while len(a) + len(b) > m:  # google-research/bert truncate_seq_pair
        trunc = a if len(a) > len(b) else b
        trunc.pop()
    assert examples._truncate_lengths(la, lb, m) == (len(a), len(b))
