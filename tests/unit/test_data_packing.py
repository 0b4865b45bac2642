"""Packing: the packer, the packed batches' fields, the same pairs and masks as unpacked,
per-pair masking, resume, process shares, phase 1, meta.json and the one-line errors."""

import collections
import os

import numpy as np
import pytest

from tests.data_fixtures import SHORT_DOCS, prepared, read_split, unmask
from flax_bert.data import packing, pipeline, prepare as prepare_lib
from flax_bert.data import config as options, vocab as vocab_lib
from flax_bert.data.config import DataOptions
from flax_bert.errors import UserError

BATCH = 8
OPTS = dict(max_seq_length=128, eval_fraction=0.3, dupe_factor=3)


def _prepared(tmp_path_factory, **overrides):
    return prepared(tmp_path_factory, corpus=SHORT_DOCS, **OPTS, **overrides)


def _train(out, opts, batch=BATCH, p=0, pc=1, **kw):
    return pipeline.make_train_iterator(out, opts, global_batch_size=batch, seed=0,
                                        process_index=p, process_count=pc, **kw)


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _pairs(batch):
    """Each real pair of a packed batch: (row, slot, start, end, its predictions [M] bool)."""
    for r, i in zip(*np.nonzero(batch["pair_weights"] > 0)):
        start = int(batch["cls_positions"][r, i])
        end = start + int((batch["pair_ids"][r] == i + 1).sum())
        pos = batch["masked_positions"][r]
        yield int(r), int(i), start, end, (batch["masked_weights"][r] > 0) & (pos >= start) & (
            pos < end)


def _pair_items(batch, preds, unmasked):
    """Multiset items of a batch's pairs: (ids, masked input ids, pair-local masked
    positions, label) as tuples; packed (`preds`) or unpacked (preds None) batches."""
    ids = unmask(batch)
    if preds is None:
        spans = [(r, r, 0, int(batch["attention_mask"][r].sum()), batch["masked_weights"][r] > 0)
                 for r in range(len(ids))]
    else:
        spans = list(_pairs(batch))
    items = []
    for r, i, start, end, w in spans:
        label = batch["next_sentence_label"][r] if preds is None else \
            batch["next_sentence_label"][r, i]
        masked = () if unmasked else (tuple(batch["input_ids"][r, start:end]),
                                      tuple(batch["masked_positions"][r][w] - start))
        items.append((tuple(ids[r, start:end]), int(label)) + masked)
    return collections.Counter(items)


def _first_fit(lengths, max_tokens, max_pairs):
    rooms, sizes = [], []
    for x in lengths:
        for i, (room, size) in enumerate(zip(rooms, sizes)):
            if room >= x and size < max_pairs:
                rooms[i], sizes[i] = room - x, size + 1
                break
        else:
            rooms.append(max_tokens - x)
            sizes.append(1)
    return len(rooms)


@pytest.mark.parametrize("max_tokens,max_pairs", [(128, 3), (512, 3), (512, 2), (512, 4)])
def test_packer_places_every_pair_once_within_the_limits_and_beats_first_fit(max_tokens,
                                                                              max_pairs):
    for seed in range(2):
        rng = np.random.default_rng(seed)
        full = rng.random(1000) < 0.2  # a fifth of full pairs, as long documents give
        lengths = np.where(full, max_tokens - rng.integers(0, 4, 1000),
                           np.clip(rng.lognormal(np.log(max_tokens / 3), 0.8, 1000), 5,
                                   max_tokens)).astype(np.int64)
        order, sizes = packing.pack(lengths, max_tokens, max_pairs, np.random.default_rng(7))
        assert sorted(order.tolist()) == list(range(len(lengths)))
        assert 1 <= sizes.min() and sizes.max() <= max_pairs and sizes.sum() == len(lengths)
        row_tokens = np.add.reduceat(lengths[order], np.cumsum(sizes) - sizes)  # [R]
        assert row_tokens.max() <= max_tokens
        again = packing.pack(lengths, max_tokens, max_pairs, np.random.default_rng(7))
        assert np.array_equal(again[0], order) and np.array_equal(again[1], sizes)
        other = packing.pack(lengths, max_tokens, max_pairs, np.random.default_rng(8))
        assert len(other[1]) == len(sizes) and not np.array_equal(other[0], order)
        assert len(sizes) <= _first_fit(lengths, max_tokens, max_pairs)
        assert len(sizes) <= _first_fit(np.sort(lengths)[::-1], max_tokens, max_pairs)


def test_packer_keeps_short_pairs_for_the_rows_that_need_them():
    # Best-fit decreasing needs 4 rows: 300+212, 250+250, 200+62+40 and 22 alone.
    lengths = np.array([300, 212, 250, 250, 62, 40, 22, 200])
    order, sizes = packing.pack(lengths, 512, 3, np.random.default_rng(0))
    rows = {tuple(r) for r in np.split(lengths[order], np.cumsum(sizes)[:-1])}
    assert rows == {(300, 212), (250, 200, 62), (250, 40, 22)}  # longest first


def test_packed_batches_have_the_spec_fields(tmp_path_factory):
    out, _, meta, opts = _prepared(tmp_path_factory, packing=True)
    seq, preds, k = meta["max_seq_length"], meta["max_predictions_per_seq"], 3
    m = packing.predictions_per_row(opts.masked_lm_prob, seq, k, preds)
    assert m == min(k * preds, int(np.ceil(0.15 * seq)) + k) < k * preds
    special = vocab_lib.special_ids(os.path.join(out, "vocab.txt"))
    evals = list(pipeline.make_eval_iterator(out, opts, global_batch_size=BATCH,
                                             process_index=0, process_count=1))
    multi = 0
    for batch in [next(_train(out, opts))] + evals:
        shapes = {key: (v.shape, v.dtype.name) for key, v in batch.items()}
        assert shapes == {
            **{key: ((BATCH, seq), "int32") for key in (
                "input_ids", "token_type_ids", "attention_mask", "position_ids", "pair_ids")},
            "cls_positions": ((BATCH, k), "int32"), "next_sentence_label": ((BATCH, k), "int32"),
            "pair_weights": ((BATCH, k), "float32"), "masked_positions": ((BATCH, m), "int32"),
            "masked_ids": ((BATCH, m), "int32"), "masked_weights": ((BATCH, m), "float32")}
        ids = unmask(batch)
        for r in range(BATCH):
            real = batch["pair_weights"][r] > 0
            n = int(real.sum())
            assert np.all(real[:n]) and not real[n:].any()  # real pairs first
            for key in ("cls_positions", "next_sentence_label"):
                assert np.all(batch[key][r, n:] == 0)
            w = batch["masked_weights"][r] > 0  # the row's predictions first, by position
            assert np.all(w[: w.sum()]) and np.all(batch["masked_positions"][r, ~w] == 0)
            assert np.all(np.diff(batch["masked_positions"][r, w]) > 0)
            multi += n > 1
        ends = {}
        for r, i, start, end, w in _pairs(batch):
            assert start == ends.get((r, i - 1), 0)  # back to back from position 0
            ends[(r, i)] = end
            assert np.all(batch["pair_ids"][r, start:end] == i + 1)
            assert np.array_equal(batch["position_ids"][r, start:end], np.arange(end - start))
            seps = start + np.flatnonzero(ids[r, start:end] == special.sep)
            assert ids[r, start] == special.cls and len(seps) == 2 and seps[1] == end - 1
            types = batch["token_type_ids"][r, start:end]
            assert np.array_equal(types, (np.arange(start, end) > seps[0]).astype(np.int32))
            pos = batch["masked_positions"][r, w]
            assert 1 <= w.sum() and np.all(batch["pair_ids"][r, pos] == i + 1)
            assert not np.isin(ids[r, pos], [special.cls, special.sep, special.pad]).any()
        for r in range(BATCH):
            pad = batch["pair_ids"][r] == 0
            assert np.array_equal(batch["attention_mask"][r], (~pad).astype(np.int32))
            assert pad.sum() == seq - max([e for (row, _), e in ends.items() if row == r] or [0])
            for key in ("input_ids", "token_type_ids", "position_ids"):
                assert np.all(batch[key][r, pad] == (special.pad if key == "input_ids" else 0))
    assert multi > BATCH  # rows with several pairs were seen


def test_packed_prepare_holds_the_unpacked_pairs_and_masks(tmp_path_factory):
    for static in (False, True):
        flags = {} if not static else {"dynamic_masking": False}
        out, _, meta, opts = _prepared(tmp_path_factory, packing=True, **flags)
        ref, _, ref_meta, ref_opts = _prepared(tmp_path_factory, **flags)
        assert meta["num_train_pairs"] == ref_meta["num_train_examples"] > meta["num_train_rows"]
        assert meta["num_eval_pairs"] == ref_meta["num_eval_examples"] > meta["num_eval_rows"]
        preds = meta["max_predictions_per_seq"]
        # One batch of every train row (unmasked pairs), every eval batch (static masks).
        rows, n = meta["num_train_rows"], ref_meta["num_train_examples"]
        got = _pair_items(next(_train(out, opts, batch=rows)), preds, unmasked=not static)
        want = _pair_items(next(_train(ref, ref_opts, batch=n)), None, unmasked=not static)
        assert got == want and sum(got.values()) == n
        evals = [pipeline.make_eval_iterator(d, o, global_batch_size=BATCH, process_index=0,
                                             process_count=1) for d, o in ((out, opts),
                                                                            (ref, ref_opts))]
        got = sum((_pair_items(b, preds, False) for b in evals[0]), collections.Counter())
        want = sum((_pair_items(b, None, False) for b in evals[1]), collections.Counter())
        pad_items = [item for item in want if not item[0]]  # unpacked padding rows
        for item in pad_items:
            del want[item]
        assert got == want and sum(got.values()) == meta["num_eval_pairs"]
    a, b = read_split(out, "train"), read_split(ref, "train")  # as stored, in order
    assert sorted(map(tuple, a["input_ids"])) == sorted(map(tuple, b["input_ids"]))


@pytest.mark.parametrize("whole_word", [False, True])
def test_each_pair_keeps_its_own_predictions_at_the_bert_rates(tmp_path_factory, whole_word):
    out, _, meta, opts = _prepared(tmp_path_factory, packing=True,
                                   whole_word_masking=whole_word)
    preds = meta["max_predictions_per_seq"]
    special = vocab_lib.special_ids(os.path.join(out, "vocab.txt"))
    cont = vocab_lib.continuation_table(os.path.join(out, "vocab.txt"))
    it = _train(out, opts, batch=32)
    chosen = candidates = split_words = 0
    replaced = []
    for _ in range(10):
        batch = next(it)
        for r, i, start, end, w in _pairs(batch):
            count = int(w.sum())
            rule = min(preds, max(1, round(0.15 * (end - start - 3))))
            # Whole words stop before the first word that would overshoot (as unpacked).
            assert count == rule if not whole_word else count <= rule
            chosen, candidates = chosen + count, candidates + end - start - 3
        w = batch["masked_weights"] > 0
        ids, picked = unmask(batch), np.zeros(batch["input_ids"].shape, bool)
        picked[np.nonzero(w)[0], batch["masked_positions"][w]] = True
        joins = cont[ids[:, 1:]] & ~np.isin(ids[:, :-1], [special.cls, special.sep,
                                                            special.pad])  # [b, L-1]
        split_words += int((picked[:, 1:] != picked[:, :-1])[joins].sum())
        now = np.take_along_axis(batch["input_ids"], batch["masked_positions"], 1)[w]
        replaced.append(np.stack([now, batch["masked_ids"][w]]))
    now, orig = np.concatenate(replaced, axis=1)
    is_mask = now == special.mask
    kept = (now == orig) & ~is_mask
    assert abs(is_mask.mean() - 0.8) < 0.03 and abs(kept.mean() - 0.1) < 0.03
    if whole_word:
        assert split_words == 0 and cont[np.concatenate(replaced, axis=1)[1]].any()
    else:
        assert abs(chosen / candidates - 0.15) < 0.015


def test_packed_resume_and_process_shares(tmp_path_factory):
    out, _, _, opts = _prepared(tmp_path_factory, packing=True)
    reference = [next(it) for it in [_train(out, opts)] for _ in range(12)]
    first = _train(out, opts)
    for _ in range(7):
        next(first)
    resumed = _train(out, opts)
    resumed.set_state(first.get_state())
    assert all(_equal(next(resumed), ref) for ref in reference[7:])
    single, p0, p1 = (_train(out, opts, 2 * BATCH, p, pc) for p, pc in ((0, 1), (0, 2), (1, 2)))
    for _ in range(4):
        s, a, b = next(single), next(p0), next(p1)
        assert _equal({key: np.concatenate([a[key], b[key]]) for key in a}, s)


def test_phase1_is_packed_too(tmp_path_factory):
    out, _, meta, opts = _prepared(tmp_path_factory, packing=True)
    short = opts.for_phase1(32, os.path.join(out, "vocab.txt"))
    assert (short.packing, short.max_pairs_per_row, short.max_predictions_per_seq) == (
        True, 3, 3)
    short_dir = out + "_phase1"
    short_meta = prepare_lib.prepare(short, short_dir, progress=False)
    assert short_meta["packed"] and short_meta["num_train_pairs"] > short_meta["num_train_rows"]
    steps = 3
    phased = lambda: _train(out, opts, phase1=pipeline.Phase1(  # noqa: E731
        short_dir, short, 2 * BATCH, steps))
    first, then = _train(short_dir, short, batch=2 * BATCH), _train(out, opts)
    expected = [next(first) for _ in range(steps)] + [next(then) for _ in range(3)]
    got = [next(it) for it in [phased()] for _ in range(len(expected))]
    assert [(b["input_ids"].shape, b["masked_ids"].shape) for b in got] == (
        [((2 * BATCH, 32), (2 * BATCH, 8))] * steps + [((BATCH, 128), (BATCH, 23))] * 3)
    # M = min(K * P, ceil(0.15 * L) + K): min(9, 5 + 3) at 32 tokens, min(30, 20 + 3) at 128
    assert all(_equal(a, b) for a, b in zip(got, expected))
    it = phased()
    for _ in range(steps):
        next(it)
    resumed = phased()
    resumed.set_state(it.get_state())
    assert all(_equal(next(resumed), ref) for ref in expected[steps:])


def test_meta_counts_rows_pairs_and_real_tokens(tmp_path_factory):
    for packed in (True, False):
        out, _, meta, opts = _prepared(tmp_path_factory, packing=packed)
        rows, seq = meta["num_train_rows"], meta["max_seq_length"]
        assert (meta["packed"], meta["max_pairs_per_row"]) == ((True, 3) if packed else
                                                               (False, 1))
        assert meta["num_train_examples"] == rows and (packed or meta["num_train_pairs"] == rows)
        batch = next(_train(out, opts, batch=rows))  # every train row once
        real = batch["attention_mask"].sum() / (rows * seq)
        assert meta["train_real_token_fraction"] == pytest.approx(real, abs=1e-12)
        assert (real > 0.9) if packed else (real < 0.5)


def test_options_flags_key_and_errors(tmp_path_factory):
    out, _, meta, opts = _prepared(tmp_path_factory, packing=True)
    ref, _, _, ref_opts = _prepared(tmp_path_factory)
    args = prepare_lib.parser().parse_args(["--input", "a", "--output", "o", "--packing",
                                            "--max-pairs-per-row", "2"])
    assert options.from_flags(args) == DataOptions().replace(
        input=("a",), packing=True, max_pairs_per_row=2)
    sources = [{"path": "/c.txt", "bytes": 1}]
    key = lambda o: prepare_lib.cache_key(o, sources)  # noqa: E731
    assert key(ref_opts) == key(ref_opts.replace(max_pairs_per_row=5))  # unpacked: ignored
    assert "packing" not in key(ref_opts)[0]
    assert key(opts)[1] != key(opts.replace(max_pairs_per_row=2))[1] != key(ref_opts)[1]
    with pytest.raises(UserError, match=r"^config.data.max_pairs_per_row=0 is out of range; "
                                        r"set it to a value >= 1$"):
        opts.replace(max_pairs_per_row=0).check()
    for folder, o, says in (
            (out, ref_opts, "is packed, max_pairs_per_row=3"),
            (out, opts.replace(max_pairs_per_row=2), "is packed, max_pairs_per_row=3"),
            (ref, opts, "is not packed")):
        for make in (lambda: _train(folder, o), lambda: pipeline.make_eval_iterator(
                folder, o, global_batch_size=BATCH, process_index=0, process_count=1)):
            with pytest.raises(UserError) as err:
                make()
            assert f"{folder} {says} (its meta.json)" in str(err.value)
            assert "\n" not in str(err.value) and "re-run prepare" in str(err.value)


@pytest.mark.parametrize("size", ["tiny", "mini", "small", "medium", "base", "large"])
def test_size_files_pretrain_packed_in_bert_s_two_phases(size):
    import importlib

    from configs import default
    from flax_bert.data.config import phase1_steps

    config = importlib.import_module(f"configs.{size}").get_config()
    d, t = config.data, config.train
    assert (d.packing, d.max_pairs_per_row, d.max_seq_length) == (True, 3, 512)
    assert phase1_steps(t, d.max_seq_length) == 900_000 and t.phase1_seq_length == 128
    first = DataOptions.from_config(d).for_phase1(t.phase1_seq_length, "vocab.txt")
    assert (first.max_predictions_per_seq, first.packing, first.max_pairs_per_row) == (
        20, True, 3)
    assert (t.phase1_batch_size, t.global_batch_size) == (224, 128)  # rows: ~250 pairs
    plain = default.get_config()  # the default run stays unpacked, as it was
    assert (plain.data.packing, plain.data.max_seq_length, plain.train.global_batch_size,
            plain.train.phase1_batch_size, plain.train.phase1_fraction) == (
        False, 128, 28, 48, 0.4)
