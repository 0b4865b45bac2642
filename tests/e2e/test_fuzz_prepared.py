"""Corrupted prepared folders are caught before their bytes reach a batch: a short seeded
run of tools/fuzz_prepared.py (every corruption kind), a meta.json of another prepare
and a flip in meta.json's version field (each named as what it is), and a shard altered
so that it is first read mid-training (one `error:` line from train.py, exit 2, the
checkpoints before kept, and a resume from the newest once the shard is put back)."""

from __future__ import annotations

import collections
import json
import os
import shutil

import jax
import numpy as np
import pytest

from tools import fuzz_prepared as fuzz
from flax_bert.data import pretraining_data as inputs, pipeline, prepare
from flax_bert.data.config import DataOptions
from flax_bert.errors import UserError
from tests import ckpt_helpers as h
from tests.data_fixtures import marker_corpus

CASES = 40
STEPS = 12  # the mid-run test's train steps


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> tuple[list[dict], str, object]:
    return fuzz.fuzz(str(tmp_path_factory.mktemp("fuzz")), CASES, seed=0, log=lambda _: None)


def test_every_corruption_is_one_line_naming_the_file(fuzzed):
    results, _, _ = fuzzed
    print(fuzz.table(results))
    assert {r["kind"] for r in results} == set(fuzz.KINDS)
    assert [(r["case"], r["outcome"], r["problems"]) for r in results if r["problems"]] == []
    assert collections.Counter(r["outcome"] for r in results)["no effect"] == 0


def test_meta_of_another_prepare_and_a_flipped_version_field(fuzzed, tmp_path):
    _, folder, _ = fuzzed
    other = os.path.join(os.path.dirname(folder), "B")
    copy = str(tmp_path / "foreign")
    shutil.copytree(folder, copy)
    shutil.copy(os.path.join(other, "meta.json"), copy)
    with pytest.raises(UserError, match=rf"^{copy}/meta.json: another prepare's \(fingerprint "):
        pipeline.load_meta(copy)
    copy = str(tmp_path / "version")
    shutil.copytree(folder, copy)
    path = os.path.join(copy, "meta.json")
    text = open(path).read()
    open(path, "w").write(text.replace('"format_version"', '"format_versioo"'))
    with pytest.raises(UserError, match=rf"^{path}: truncated or altered \(its checksum"):
        pipeline.load_meta(copy)


def test_train_py_on_a_folder_without_vocab_is_one_error_line(fuzzed, tmp_path):
    _, folder, opts = fuzzed
    copy = str(tmp_path / "no_vocab")
    shutil.copytree(folder, copy)
    os.remove(os.path.join(copy, "vocab.txt"))
    case = dict(folder=copy, outcome="file missing", message=f"{copy}/vocab.txt: missing")
    env = h.env(1, jax.config.jax_compilation_cache_dir)
    assert fuzz.cli(case, opts, str(tmp_path / "w"), env) == ([], [])


def test_a_given_folder_without_meta_is_an_error_and_never_prepared_into(fuzzed, tmp_path):
    _, folder, opts = fuzzed
    copy = str(tmp_path / "no_meta")
    shutil.copytree(folder, copy)
    os.remove(os.path.join(copy, "meta.json"))
    before = h.tree_hash(copy)
    with pytest.raises(UserError, match=rf"^{copy}/meta.json: not found; run python -m "
                                        rf"flax_bert.data.prepare --output {copy}$"):
        inputs.pretraining_data(opts.replace(prepared_dir=copy), str(tmp_path / "default"))
    assert h.tree_hash(copy) == before
    assert not os.path.exists(tmp_path / "default")


def _first_reads(out: str, opts, batch: int, seed: int) -> dict[str, int]:
    """{shard name: the train step that first reads it} of a run at `batch` and `seed`."""
    batches = pipeline._Batches(out, "train", opts, global_batch_size=batch, seed=seed,
                                process_index=0, process_count=1, dynamic=True, train=True)
    first: dict[str, int] = {}
    for k in range(batches.n // batch):  # the first epoch
        idx = batches._perm(0)[k * batch + np.arange(batch)]
        for shard in np.searchsorted(batches.ends, idx, side="right"):
            first.setdefault(batches.names[shard], k + 1)
    return first


@pytest.fixture(scope="module")
def mid_run(tmp_path_factory) -> dict:
    """train.py (a checkpoint every step) on a folder whose shard first read at a step
    >= 4 is altered; then the shard put back and the same command rerun."""
    root = tmp_path_factory.mktemp("mid_run")
    corpus = str(root / "corpus.txt")
    marker_corpus(corpus, num_docs=24, sentences=30)
    opts = DataOptions().replace(
        input=(corpus,), vocab_size=4000, max_seq_length=64, max_predictions_per_seq=10,
        eval_fraction=0.2, num_workers=1, dupe_factor=2, shard_mb=0.003)
    out = str(root / "prepared")
    prepare.prepare(opts, out, progress=False)
    first = _first_reads(out, opts, batch=8, seed=0)
    name, step = max(((n, s) for n, s in first.items() if s <= STEPS), key=lambda x: x[1])
    path = os.path.join(out, name)
    good = open(path, "rb").read()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x5A
    open(path, "wb").write(bytes(bad))
    workdir = str(root / "w")
    args = [f"--config.data.prepared_dir={out}", "--config.model.num_hidden_layers=1",
            "--config.model.hidden_size=16", "--config.model.num_attention_heads=1",
            "--config.model.intermediate_size=16", "--config.data.max_seq_length=64",
            "--config.data.max_predictions_per_seq=10", "--config.train.phase1_fraction=0",
            "--config.train.global_batch_size=8", f"--config.train.steps={STEPS}",
            "--config.train.log_every=1", "--config.train.eval_every=0",
            "--config.checkpoint.every=1"]
    cache = jax.config.jax_compilation_cache_dir
    failed = h.run(workdir, args, cache, devices=1, expect_rc=None)
    rows = sorted(h.train_rows(workdir))
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    done = sorted(int(n) for n in names if n.isdigit())
    restorable = [h.restore_item(workdir, done[-1], item) is not None
                  for item in ("params", "opt_state", "train")] if done else []
    open(path, "wb").write(good)
    rerun = h.run(workdir, args, cache, devices=1, expect_rc=None)
    print(f"shard {name} first read at step {step}: rows {rows}, checkpoints {sorted(names)}")
    return dict(out=out, path=path, step=step, failed=failed, rows=rows, done=done,
                restorable=restorable, rerun=rerun, workdir=workdir)


def test_shard_altered_mid_run_is_one_error_line_and_keeps_the_checkpoints(mid_run):
    failed, out, path = mid_run["failed"], mid_run["out"], mid_run["path"]
    assert mid_run["step"] >= 4  # read first mid-run, after several checkpoints
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert [line for line in failed.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {path}: altered (its checksum differs from meta.json's); re-run prepare "
        f"with --force (or delete {out})"]
    rows, done = mid_run["rows"], mid_run["done"]
    assert rows == list(range(1, len(rows) + 1)) and len(rows) < mid_run["step"]
    assert done and rows[-1] - 1 <= done[-1] <= rows[-1]  # no logged step lost but the last
    assert mid_run["restorable"] == [True, True, True]
    workdir = mid_run["workdir"]
    assert mid_run["rerun"].returncode == 0, mid_run["rerun"].stderr[-3000:]
    assert f"resumed from {workdir}/checkpoints/{done[-1]} at step {done[-1]}" in mid_run[
        "rerun"].stdout
    assert sorted(h.train_rows(workdir)) == list(range(1, STEPS + 1))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["split"] for line in f].count("eval") == 1


def test_shard_altered_mid_run_prints_no_traceback(mid_run):
    assert "Traceback" not in mid_run["failed"].stderr
