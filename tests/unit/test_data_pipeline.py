"""grain pipeline: determinism, resumable state, per-process sharding, epochs, eval."""

import dataclasses
import glob
import os

import numpy as np
import pytest

from tests.data_fixtures import marker_corpus, prepared, read_split, unmask
from flax_bert.data import config as options, pipeline, prepare as prepare_lib, shards
from flax_bert.data.config import DataOptions
from flax_bert.errors import UserError

BATCH = 16


def _train(out, opts, seed=0, p=0, pc=1, batch=BATCH):
    return pipeline.make_train_iterator(
        out, opts, global_batch_size=batch, seed=seed, process_index=p, process_count=pc
    )


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_same_seed_same_batches_other_seed_differs(tmp_path_factory):
    out, _, _, opts = prepared(tmp_path_factory)
    a, b, c = _train(out, opts), _train(out, opts), _train(out, opts, seed=1)
    xs, ys, zs = ([next(it) for _ in range(5)] for it in (a, b, c))
    assert all(_equal(x, y) for x, y in zip(xs, ys))
    assert not any(np.array_equal(x["input_ids"], z["input_ids"]) for x, z in zip(xs, zs))


def test_restored_state_continues_exactly(tmp_path_factory):
    out, _, _, opts = prepared(tmp_path_factory)
    k = 7
    full = _train(out, opts)
    reference = [next(full) for _ in range(k + 5)]
    first = _train(out, opts)
    for _ in range(k):
        next(first)
    state = first.get_state()
    resumed = _train(out, opts)  # freshly built
    resumed.set_state(state)
    assert all(_equal(next(resumed), ref) for ref in reference[k:])


def test_two_processes_split_the_global_batch(tmp_path_factory):
    out, _, _, opts = prepared(tmp_path_factory)
    single = _train(out, opts, batch=2 * BATCH)
    p0 = _train(out, opts, p=0, pc=2, batch=2 * BATCH)
    p1 = _train(out, opts, p=1, pc=2, batch=2 * BATCH)
    for _ in range(4):
        s, a, b = next(single), next(p0), next(p1)
        assert a["input_ids"].shape[0] == BATCH
        rows_a = {r.tobytes() for r in unmask(a)}
        rows_b = {r.tobytes() for r in unmask(b)}
        assert not rows_a & rows_b
        # Stacked, the two shards are exactly the single-process global batch (masks too).
        assert _equal({k: np.concatenate([a[k], b[k]]) for k in a}, s)


def test_each_epoch_is_a_new_permutation(tmp_path_factory):
    out, _, meta, opts = prepared(tmp_path_factory)
    n = meta["num_train_examples"]
    unmasked = read_split(out, "train")["input_ids"]
    index = {r.tobytes(): i for i, r in enumerate(unmasked)}
    it = _train(out, opts, batch=1)
    order = [index[unmask(next(it))[0].tobytes()] for _ in range(2 * n)]
    assert sorted(order[:n]) == sorted(index.values()) == sorted(order[n:])
    assert order[:n] != order[n:]


def test_eval_is_finite_padded_and_deterministic(tmp_path_factory):
    out, _, meta, opts = prepared(tmp_path_factory)
    n = meta["num_eval_examples"]
    ev = pipeline.make_eval_iterator(out, opts, global_batch_size=BATCH, process_index=0,
                                     process_count=1)
    first, second = list(ev), list(ev)
    assert len(first) == -(-n // BATCH) and all(_equal(a, b) for a, b in zip(first, second))
    weights = np.concatenate([b["example_weight"] for b in first])
    assert weights.sum() == n and np.all(weights[:n] == 1)
    last = first[-1]
    pad = last["example_weight"] == 0
    assert all(np.all(last[k][pad] == 0) for k in last)
    # Two processes: the same number of batches, disjoint real rows covering the split.
    halves = [
        list(pipeline.make_eval_iterator(out, opts, global_batch_size=BATCH, process_index=p,
                                         process_count=2))
        for p in range(2)
    ]
    assert len(halves[0]) == len(halves[1]) == len(first)
    for a, b, s in zip(*halves, first):
        assert _equal({k: np.concatenate([a[k], b[k]]) for k in a}, s)


def test_prepare_is_cached_and_refuses_another_prepares_folder(tmp_path_factory):
    _, _, _, opts = prepared(tmp_path_factory)
    out = str(tmp_path_factory.mktemp("cache"))
    meta = prepare_lib.prepare(opts, out, progress=False)
    stamp = os.path.getmtime(os.path.join(out, "meta.json"))
    assert prepare_lib.prepare(opts, out, progress=False) == meta
    assert os.path.getmtime(os.path.join(out, "meta.json")) == stamp
    config = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    config["input"] = ",".join(opts.input)
    config["worker_count"] = 2  # how the pipeline feeds: not part of the key
    assert prepare_lib.prepare(DataOptions.from_config(config), out) == meta  # same key
    changed = dataclasses.replace(opts, short_seq_prob=0.5)
    before = sorted(os.listdir(out))
    with pytest.raises(UserError, match="meta.json: the folder holds another prepare's data"):
        prepare_lib.prepare(changed, out, progress=False)
    assert sorted(os.listdir(out)) == before  # nothing touched
    new_meta = prepare_lib.prepare(changed, out, progress=False, force=True)
    assert new_meta["options"]["short_seq_prob"] == 0.5
    names = {n for n in os.listdir(out) if n.endswith(".arrayrecord")}
    assert names == set(new_meta["files"]) - {"vocab.txt"}  # the old shards are gone
    # A folder with shards but no meta.json (another prepare cut short) is refused too.
    os.remove(os.path.join(out, "meta.json"))
    with pytest.raises(UserError, match=r"arrayrecord: the folder holds another prepare's"):
        prepare_lib.prepare(opts, out, progress=False)


def test_worker_processes_give_the_same_shards(tmp_path_factory):
    out1, _, meta1, opts = prepared(tmp_path_factory)
    out2 = str(tmp_path_factory.mktemp("workers"))
    vocab = os.path.join(out1, "vocab.txt")  # the same vocab: compare tokenization only
    meta2 = prepare_lib.prepare(dataclasses.replace(opts, num_workers=2, vocab=vocab), out2,
                                progress=False)
    for split in ("train", "eval"):
        shards1, shards2 = meta1["shards"][split], meta2["shards"][split]
        assert [s["records"] for s in shards1] == [s["records"] for s in shards2]
        for s1, s2 in zip(shards1, shards2):  # byte for byte (names differ by the options)
            assert open(os.path.join(out1, s1["name"]), "rb").read() == open(
                os.path.join(out2, s2["name"]), "rb").read()


def test_options_are_the_default_config_and_the_cli_flags():
    """config.data is read in one place (DataOptions.from_config) with one set of defaults
    (DataOptions'), which configs/default.py and the prepare CLI's flags take; the default
    run's input is the bundled corpus, found from the config file whatever the working
    folder; a missing field is an error."""
    from configs import default

    d = default.get_config().data
    opts = DataOptions.from_config(d)
    assert opts == DataOptions(input=(default.BUNDLED_CORPUS,))
    assert set(d) == {f.name for f in dataclasses.fields(DataOptions)}
    assert opts.input == (d.input,)
    assert os.path.isabs(d.input) and len(glob.glob(d.input)) == 7
    args = prepare_lib.parser().parse_args(["--input", "a.txt", "--output", "o"])
    assert options.from_flags(args) == opts.replace(input=("a.txt",))
    args = prepare_lib.parser().parse_args(["--input", "a", "b", "--output", "o",
                                            "--no-lowercase", "--max-seq-length", "64"])
    assert options.from_flags(args) == opts.replace(
        input=("a", "b"), lowercase=False, max_seq_length=64)
    del d["prefetch"]
    with pytest.raises(UserError, match="config.data has no field 'prefetch'"):
        DataOptions.from_config(d)


def test_worker_processes_give_the_same_batches(tmp_path_factory):
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's multiprocessing reads absl flags (train.py parses)
        flags.FLAGS.mark_as_parsed()
    out, _, _, opts = prepared(tmp_path_factory)
    reference = _train(out, opts)
    with_workers = pipeline.make_train_iterator(
        out, opts.replace(worker_count=2), global_batch_size=BATCH, seed=0,
        process_index=0, process_count=1,
    )
    try:
        for _ in range(3):
            ref = next(reference)
            assert _equal(next(with_workers), ref)
    finally:
        with_workers.close()


def test_phase1_batches_come_first_then_the_main_data_and_resume_exactly(tmp_path_factory):
    out, _, meta, opts = prepared(tmp_path_factory)
    short = opts.for_phase1(32, os.path.join(out, "vocab.txt"))
    assert (short.max_seq_length, short.max_predictions_per_seq) == (32, 5)  # 10 * 32/64
    short_dir = out + "_phase1"
    short_meta = prepare_lib.prepare(short, short_dir)
    assert open(os.path.join(short_dir, "vocab.txt")).read() == open(
        os.path.join(out, "vocab.txt")).read()
    # Same held-out documents: phase 1 never trains on the main eval split.
    main_eval = set(read_split(out, "eval")["doc_a"].tolist())
    short_train = set(read_split(short_dir, "train")["doc_a"].tolist())
    short_eval = set(read_split(short_dir, "eval")["doc_a"].tolist())
    assert short_meta["num_eval_documents"] == meta["num_eval_documents"]
    assert main_eval and short_eval <= main_eval and not short_train & main_eval

    steps = 3
    phased = lambda: pipeline.make_train_iterator(  # noqa: E731
        out, opts, global_batch_size=BATCH, seed=0, process_index=0, process_count=1,
        phase1=pipeline.Phase1(short_dir, short, 2 * BATCH, steps))
    first, then = _train(short_dir, short, batch=2 * BATCH), _train(out, opts)
    expected = [next(first) for _ in range(steps)] + [next(then) for _ in range(4)]
    it = phased()
    got = [next(it) for _ in range(len(expected))]
    assert [b["input_ids"].shape for b in got] == [(2 * BATCH, 32)] * steps + [(BATCH, 64)] * 4
    assert all(_equal(a, b) for a, b in zip(got, expected))
    for k in (2, 3, 5):  # inside phase 1, at the switch, inside phase 2
        it = phased()
        for _ in range(k):
            next(it)
        resumed = phased()
        resumed.set_state(it.get_state())
        assert all(_equal(next(resumed), ref) for ref in expected[k:])


def test_shares_of_two_processes_give_the_single_prepare(tmp_path):
    files = [str(tmp_path / f"c{i}.txt") for i in range(3)]
    for i, f in enumerate(files):
        marker_corpus(f, num_docs=4, sentences=60, seed=i)
    opts = DataOptions().replace(input=tuple(files), vocab_size=600,
                                          max_seq_length=32, eval_fraction=0.3,
                                          num_workers=1, shard_mb=0.01)
    single = prepare_lib.prepare(opts, str(tmp_path / "single"), progress=False)
    assert len(shards.plan_groups(single["source_files"], 0.01 * shards.MB)) == 3
    given = dataclasses.replace(opts, vocab=str(tmp_path / "single" / "vocab.txt"))
    single = prepare_lib.prepare(given, str(tmp_path / "single2"), progress=False)
    shared = str(tmp_path / "shared")
    first = prepare_lib.prepare(given, shared, progress=False, shard_index=1, num_shards=2)
    assert first == {} and not os.path.exists(os.path.join(shared, "meta.json"))
    assert [f for f in os.listdir(shared) if f.startswith("share-")]  # the first's share
    last = prepare_lib.prepare(given, shared, progress=False, shard_index=0, num_shards=2)
    assert last == single == pipeline.load_meta(shared)
    assert sorted(os.listdir(shared)) == sorted(os.listdir(tmp_path / "single2"))  # no shares
    with pytest.raises(UserError, match="--num-shards > 1 needs --vocab"):
        prepare_lib.prepare(opts, str(tmp_path / "novocab"), progress=False, shard_index=0,
                            num_shards=2)
